"""Load test: ``armm serve`` on loopback under many concurrent clients, half of them streaming.

Run as ``python bench/serve_load.py`` (see ``--help``; needs ``httpx``, a dev dependency). It starts
``armm serve`` in a subprocess (on a model directory you give, or on a freshly initialised ``gpt2-mini``
over bytes), then runs ``--clients`` concurrent clients for ``--duration`` seconds. Each client sends requests
back to back, alternating ``/v1/completions`` and ``/v1/chat/completions``; odd-numbered clients stream (SSE)
and every ``--abandon-every``-th streamed request is abandoned after its first chunk (a client that disconnects
mid-stream). After the load it checks that the server still answers a fresh request within a second, so no
generation slot leaked to a disconnected client. It prints one table: requests served, streamed, abandoned,
errors (any non-200 answer or broken connection; must be 0), latency p50/p99, requests/s, generated tokens/s,
and the server's peak resident memory (VmHWM). A benchmark, not a test: it exits 1 only when there were errors.
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
from dataclasses import dataclass, field
from pathlib import Path

import httpx


@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)
    streamed: int = 0
    abandoned: int = 0
    tokens: int = 0
    errors: list[str] = field(default_factory=list)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(model_dir: Path, port: int, max_batch_size: int, threads: int | None) -> subprocess.Popen:
    env = dict(os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {}))
    command = [sys.executable, "-m", "armm.cli", "serve", str(model_dir), "--port", str(port),
               "--max-batch-size", str(max_batch_size), "--device", "cpu", "--model-name", "m"]
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


async def wait_until_up(base: str, server: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient() as client:
        while time.monotonic() < deadline:
            if server.poll() is not None:
                raise SystemExit(f"error: the server exited: {server.stderr.read()}")
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


async def one_request(client: httpx.AsyncClient, base: str, number: int, stream: bool, abandon: bool,
                      max_tokens: int, tally: Tally) -> None:
    path, body = request_body(number, stream, max_tokens)
    start = time.perf_counter()
    try:
        if not stream:
            response = await client.post(base + path, json=body)
            if response.status_code != 200:
                tally.errors.append(f"{response.status_code} {response.text[:200]}")
                return
            tally.tokens += response.json()["usage"]["completion_tokens"]
        else:
            async with client.stream("POST", base + path, json=body) as response:
                if response.status_code != 200:
                    tally.errors.append(f"{response.status_code} {(await response.aread())[:200]!r}")
                    return
                chunks = 0
                async for line in response.aiter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    json.loads(line[6:])  # every chunk is valid JSON
                    chunks += 1
                    if abandon:
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


def peak_memory_mb(pid: int) -> float | None:
    """The process's peak resident set (VmHWM, Linux), in MB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


async def run(args: argparse.Namespace, model_dir: Path) -> int:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = start_server(model_dir, port, args.max_batch_size, args.threads)
    try:
        await wait_until_up(base, server)
        tally = Tally()
        start = time.monotonic()
        await asyncio.gather(*(client_loop(i, base, start + args.duration, args, tally) for i in range(args.clients)))
        elapsed = time.monotonic() - start
        async with httpx.AsyncClient(timeout=httpx.Timeout(30.0)) as client:  # nothing leaked: a fresh request is served
            check_start = time.perf_counter()
            fresh = await client.post(f"{base}/v1/completions", json={"model": "m", "prompt": "after", "max_tokens": 4})
            after = time.perf_counter() - check_start
        memory = peak_memory_mb(server.pid)
    finally:
        server.terminate()
        server.wait(timeout=30)

    served = len(tally.latencies)
    quantiles = statistics.quantiles(tally.latencies, n=100) if served > 1 else [float("nan")] * 99
    rows = [
        ("clients (half streaming)", f"{args.clients}"), ("duration (s)", f"{elapsed:.1f}"),
        ("requests served", f"{served}"), ("of them streamed", f"{tally.streamed}"),
        ("streams abandoned mid-way", f"{tally.abandoned}"), ("errors", f"{len(tally.errors)}"),
        ("latency p50 (s)", f"{quantiles[49]:.2f}"), ("latency p99 (s)", f"{quantiles[98]:.2f}"),
        ("requests/s", f"{served / elapsed:.1f}"), ("generated tokens/s", f"{tally.tokens / elapsed:.0f}"),
        ("fresh request after the load", f"{fresh.status_code} in {after:.2f} s"),
        ("server peak memory (MB)", "n/a" if memory is None else f"{memory:.0f}"),
    ]
    width = max(len(name) for name, _ in rows)
    print(f"| {'metric'.ljust(width)} | value |\n|{'-' * (width + 2)}|------:|")
    for name, value in rows:
        print(f"| {name.ljust(width)} | {value} |")
    for error in tally.errors[:10]:
        print("error:", error)
    return 1 if tally.errors or fresh.status_code != 200 else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=None, help="a model directory (default: a fresh gpt2-mini)")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load")
    parser.add_argument("--max-tokens", type=int, default=32, help="max_tokens of every request")
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
