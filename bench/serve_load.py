"""Load test: ``armm serve`` on loopback under many concurrent clients, half of them streaming, then the same load
beside hostile clients.

Run as ``python bench/serve_load.py`` (see ``--help``; needs ``httpx``, a dev dependency). It starts
``armm serve`` in a subprocess (on a model directory you give, or on a freshly initialised ``gpt2-mini``
over bytes) and runs two phases of ``--duration`` seconds each on the same server: ``--clients`` well-behaved
clients alone, then the same clients beside ``--hostile`` clients of each hostile kind. Each well-behaved client
sends requests back to back, alternating ``/v1/completions`` and ``/v1/chat/completions``; odd-numbered clients
stream (SSE) and every ``--abandon-every``-th streamed request is abandoned after its first chunk. The hostile
kinds: a body announced (Content-Length) far over the server's limit, a chunked body that never ends, a slow
sender that trickles a valid body a byte at a time, and a stream with a long answer cut off after its first chunk.
After each phase a fresh request must be answered within a second (no generation slot leaked).

It prints one table, a column per phase: the well-behaved clients' requests, errors (any non-200 answer or broken
connection; must be 0), time to first token p50/p99 (streamed requests: the first chunk with text), latency
p50/p99, throughput; the 5xx answers any client got (must be 0); what the hostile clients did; and the server's
resident memory before the phase, its peak during it (VmHWM, reset at the phase's start) and after it. A benchmark,
not a test: it exits 1 only when there were errors or 5xx answers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx

HUGE = 48_000_000  # bytes a huge-body client announces or sends: the 16M-id completions request
CUT_OFF_TOKENS = 200  # a cut-off stream asks for this many tokens (its prompt plus these fit gpt2-mini's 256)
HOSTILE_KINDS = ("announced huge body", "chunked endless body", "slow sender", "stream cut off")


@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)
    first_tokens: list[float] = field(default_factory=list)
    streamed: int = 0
    abandoned: int = 0
    tokens: int = 0
    errors: list[str] = field(default_factory=list)
    server_errors: int = 0  # 5xx answers, well-behaved and hostile clients together
    hostile: Counter[str] = field(default_factory=Counter)  # "kind: outcome" -> count


@dataclass
class Phase:
    tally: Tally
    elapsed: float
    memory: tuple[float | None, float | None, float | None]  # MB: before, peak, after
    fresh: str


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(model_dir: Path, port: int, max_batch_size: int, threads: int | None, log) -> subprocess.Popen:
    env = dict(os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {}))
    command = [sys.executable, "-m", "armm.cli", "serve", str(model_dir), "--port", str(port),
               "--max-batch-size", str(max_batch_size), "--device", "cpu", "--model-name", "m"]
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=log)


async def wait_until_up(base: str, server: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient() as client:
        while time.monotonic() < deadline:
            if server.poll() is not None:
                raise SystemExit("error: the server exited; see its log above")
            try:
                if (await client.get(f"{base}/v1/models")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.5)
    raise SystemExit("error: the server did not start in time")


def request_body(number: int, stream: bool, max_tokens: int) -> tuple[str, dict]:
    """Alternate completions and chat completions, with varied prompts and seeds."""
    if number % 2:
        return "/v1/chat/completions", {"model": "m", "messages": [{"role": "user", "content": f"Say {number}."}],
                                        "max_tokens": max_tokens, "temperature": 0.8, "seed": number,
                                        "stream": stream}
    return "/v1/completions", {"model": "m", "prompt": f"Request {number}: the", "max_tokens": max_tokens,
                               "temperature": 0.8, "seed": number, "stream": stream}


def has_token(chunk: dict) -> bool:
    """Whether a streamed chunk carries generated text (chat's first chunk only names the role)."""
    return any(choice.get("text") or choice.get("delta", {}).get("content") or choice.get("finish_reason")
               for choice in chunk.get("choices", []))


def count_status(tally: Tally, status: int) -> None:
    tally.server_errors += status >= 500


async def one_request(client: httpx.AsyncClient, base: str, number: int, stream: bool, abandon: bool,
                      max_tokens: int, tally: Tally) -> None:
    path, body = request_body(number, stream, max_tokens)
    start = time.perf_counter()
    try:
        if not stream:
            response = await client.post(base + path, json=body)
            count_status(tally, response.status_code)
            if response.status_code != 200:
                tally.errors.append(f"{response.status_code} {response.text[:200]}")
                return
            tally.tokens += response.json()["usage"]["completion_tokens"]
        else:
            async with client.stream("POST", base + path, json=body) as response:
                count_status(tally, response.status_code)
                if response.status_code != 200:
                    tally.errors.append(f"{response.status_code} {(await response.aread())[:200]!r}")
                    return
                chunks, first = 0, None
                async for line in response.aiter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    chunk = json.loads(line[6:])  # every chunk is valid JSON
                    if first is None and has_token(chunk):
                        first = time.perf_counter() - start
                        tally.first_tokens.append(first)
                    chunks += 1
                    if abandon and first is not None:
                        tally.abandoned += 1
                        return  # leaving the block closes the connection mid-stream
                tally.tokens += chunks
                tally.streamed += 1
        tally.latencies.append(time.perf_counter() - start)
    except (httpx.HTTPError, json.JSONDecodeError, KeyError) as err:
        tally.errors.append(f"{type(err).__name__}: {err}")


async def client_loop(index: int, base: str, deadline: float, args: argparse.Namespace, tally: Tally) -> None:
    stream = index % 2 == 1
    number = index
    async with httpx.AsyncClient(timeout=httpx.Timeout(120.0)) as client:
        while time.monotonic() < deadline:
            abandon = stream and args.abandon_every > 0 and (number // args.clients) % args.abandon_every == 0
            await one_request(client, base, number, stream, abandon, args.max_tokens, tally)
            number += args.clients


# --- hostile clients: raw sockets, so that they can misbehave --------------------------------------------------------
def head(length: int | None) -> bytes:
    framing = "Transfer-Encoding: chunked" if length is None else f"Content-Length: {length}"
    return (f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{framing}\r\n\r\n"
            .encode())


async def status_of(reader: asyncio.StreamReader) -> int:
    line = await reader.readline()
    return int(line.split()[1]) if line.startswith(b"HTTP/") else 0


async def huge_body(port: int, announced: bool) -> int:
    """Send a body of HUGE bytes (announced by Content-Length, or chunked without one) until the server answers."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head(HUGE if announced else None))
        answer = asyncio.ensure_future(status_of(reader))
        data, sent = b"1," * 32768, 0
        while not answer.done() and sent < HUGE:
            writer.write(data if announced else b"%x\r\n%s\r\n" % (len(data), data))
            await writer.drain()
            sent += len(data)
        return await asyncio.wait_for(answer, 30)
    finally:
        writer.transport.abort()


async def slow_sender(port: int, deadline: float, delay: float) -> int:
    """A valid request whose body arrives one byte every ``delay`` seconds; 0 when the phase ends first."""
    body = json.dumps({"model": "m", "prompt": "slowly", "max_tokens": 4}).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head(len(body)))
        for byte in body:
            if time.monotonic() > deadline:
                return 0
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(delay)
        return await asyncio.wait_for(status_of(reader), 60)
    finally:
        writer.transport.abort()


async def stream_cut_off(port: int, max_tokens: int) -> int:
    """Ask for a long streamed answer and reset the connection at its first chunk."""
    body = json.dumps({"model": "m", "prompt": "a long story", "max_tokens": max_tokens, "stream": True}).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head(len(body)) + body)
        status = await asyncio.wait_for(status_of(reader), 60)
        while status == 200 and not (await asyncio.wait_for(reader.readline(), 60)).startswith(b"data: "):
            pass
        return status
    finally:
        writer.transport.abort()


async def hostile_loop(kind: str, port: int, deadline: float, args: argparse.Namespace, tally: Tally) -> None:
    while time.monotonic() < deadline:
        try:
            if kind == "slow sender":
                status = await slow_sender(port, deadline, args.slow_delay)
            elif kind == "stream cut off":
                status = await stream_cut_off(port, CUT_OFF_TOKENS)
            else:
                status = await huge_body(port, announced=kind == "announced huge body")
        except (OSError, asyncio.TimeoutError, ValueError, IndexError) as err:
            tally.hostile[f"{kind}: {type(err).__name__}"] += 1
            continue
        count_status(tally, status)
        tally.hostile[f"{kind}: {status or 'phase ended'}"] += 1


# --- the server's memory (Linux) -------------------------------------------------------------------------------------
def status_mb(pid: int, key: str) -> float | None:
    """``VmRSS`` (resident now) or ``VmHWM`` (peak resident) of a process, in MB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def reset_peak(pid: int) -> None:
    """Start VmHWM over from the current resident set (``clear_refs`` 5, Linux 4.0+)."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        pass


async def run_phase(base: str, port: int, pid: int, args: argparse.Namespace, hostile: bool) -> Phase:
    reset_peak(pid)
    before = status_mb(pid, "VmRSS")
    tally = Tally()
    start = time.monotonic()
    deadline = start + args.duration
    clients = [client_loop(i, base, deadline, args, tally) for i in range(args.clients)]
    if hostile:
        clients += [hostile_loop(kind, port, deadline, args, tally) for kind in HOSTILE_KINDS
                    for _ in range(args.hostile)]
    await asyncio.gather(*clients)
    elapsed = time.monotonic() - start
    await asyncio.sleep(args.settle)  # let the server finish with whatever the phase left behind
    async with httpx.AsyncClient(timeout=httpx.Timeout(30.0)) as client:  # nothing leaked: a fresh request is served
        check_start = time.perf_counter()
        fresh = await client.post(f"{base}/v1/completions", json={"model": "m", "prompt": "after", "max_tokens": 4})
        after = time.perf_counter() - check_start
    count_status(tally, fresh.status_code)
    if fresh.status_code != 200 or after > 1:
        tally.errors.append(f"fresh request after the phase: {fresh.status_code} in {after:.2f} s")
    memory = (before, status_mb(pid, "VmHWM"), status_mb(pid, "VmRSS"))
    return Phase(tally, elapsed, memory, f"{fresh.status_code} in {after:.2f} s")


def rows(phase: Phase, args: argparse.Namespace) -> list[tuple[str, str]]:
    tally = phase.tally
    served = len(tally.latencies)

    def percentile(values: list[float], q: int) -> str:
        return f"{statistics.quantiles(values, n=100)[q - 1]:.2f}" if len(values) > 1 else "n/a"

    def mb(value: float | None) -> str:
        return "n/a" if value is None else f"{value:,.0f}"

    hostile = ", ".join(f"{key} ×{count}" for key, count in sorted(tally.hostile.items())) or "none"
    return [
        ("well-behaved clients (half streaming)", f"{args.clients}"), ("duration (s)", f"{phase.elapsed:.1f}"),
        ("requests served", f"{served:,}"), ("of them streamed", f"{tally.streamed:,}"),
        ("streams abandoned mid-way", f"{tally.abandoned:,}"), ("**errors**", f"**{len(tally.errors)}**"),
        ("time to first token p50 (s)", percentile(tally.first_tokens, 50)),
        ("**time to first token p99 (s)**", f"**{percentile(tally.first_tokens, 99)}**"),
        ("latency p50 (s)", percentile(tally.latencies, 50)), ("latency p99 (s)", percentile(tally.latencies, 99)),
        ("requests/s", f"{served / phase.elapsed:.1f}"), ("generated tokens/s", f"{tally.tokens / phase.elapsed:,.0f}"),
        ("fresh request after the phase", phase.fresh),
        ("hostile requests (kind: answer)", hostile),
        ("**5xx answers (all clients)**", f"**{tally.server_errors}**"),
        ("server RSS before (MB)", mb(phase.memory[0])), ("server RSS peak (MB)", mb(phase.memory[1])),
        ("server RSS after (MB)", mb(phase.memory[2])),
    ]


def print_table(phases: list[Phase], args: argparse.Namespace) -> None:
    columns = [rows(phase, args) for phase in phases]
    names = [name for name, _ in columns[0]]
    titles = ["well-behaved only", f"with {args.hostile} hostile clients of each kind"]
    print("| metric | " + " | ".join(titles) + " |\n|---|" + "---:|" * len(titles))
    for i, name in enumerate(names):
        print(f"| {name} | " + " | ".join(column[i][1] for column in columns) + " |")


async def run(args: argparse.Namespace, model_dir: Path) -> int:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryFile("w+") as log:
        server = start_server(model_dir, port, args.max_batch_size, args.threads, log)
        try:
            await wait_until_up(base, server)
            phases = [await run_phase(base, port, server.pid, args, hostile) for hostile in (False, True)]
        finally:
            server.terminate()
            server.wait(timeout=30)
            log.seek(0)
            server_log = log.read()
    print_table(phases, args)
    for phase in phases:
        for error in phase.tally.errors[:10]:
            print("error:", error)
    tracebacks = server_log.count("Traceback")
    print(f"server log: {tracebacks} tracebacks" + (f"\n{server_log[-3000:]}" if tracebacks else ""))
    failed = any(phase.tally.errors or phase.tally.server_errors for phase in phases) or tracebacks
    return 1 if failed else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=None, help="a model directory (default: a fresh gpt2-mini)")
    parser.add_argument("--clients", type=int, default=64, help="well-behaved clients")
    parser.add_argument("--hostile", type=int, default=2, help="hostile clients of each kind in the second phase")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load in each phase")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds of quiet after each phase")
    parser.add_argument("--slow-delay", type=float, default=0.05, help="seconds between a slow sender's bytes")
    parser.add_argument("--max-tokens", type=int, default=32, help="max_tokens of every well-behaved request")
    parser.add_argument("--max-batch-size", type=int, default=16, help="the server's --max-batch-size")
    parser.add_argument("--abandon-every", type=int, default=5, help="abandon every Nth streamed request (0: none)")
    parser.add_argument("--threads", type=int, default=None, help="the server's torch threads")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        model_dir = args.model
        if model_dir is None:
            model_dir = Path(folder) / "gpt2-mini"
            subprocess.run([sys.executable, "-m", "armm.cli", "init", str(model_dir), "--preset", "gpt2-mini"],
                           check=True, stdout=subprocess.DEVNULL)
        sys.exit(asyncio.run(run(args, model_dir)))


if __name__ == "__main__":
    main()
