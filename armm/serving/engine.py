"""One worker thread owns the model: requests wait in a queue, compatible ones are generated as one batch,
and each step's text (with its tokens' log-probabilities when asked) flows back to the request's event loop.
A cancelled request stops at the next step."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from armm.backends import check_backend
from armm.generation import generate
from armm.model import Transformer
from armm.sampling import build_sampler
from armm.serving.logprobs import LogprobSampler, TokenLogprob, prompt_logprobs
from armm.textstream import TextStream
from armm.tokenizer import Tokenizer

log = logging.getLogger("armm.serve")


@dataclass
class Event:
    """Text for one choice, with the log-probabilities of the tokens that released it when the job asks for them;
    ``finish_reason`` (and the choice's token count) on its last event."""

    index: int
    text: str = ""
    finish_reason: str | None = None
    completion_tokens: int = 0
    logprobs: list[TokenLogprob] = field(default_factory=list)


@dataclass(eq=False)
class Job:
    """One request: a row per choice, with its own seed. Created on the event loop that reads its events.

    ``logprobs`` (the number of most likely alternatives to list; None: no log-probabilities) adds each generated
    token's log-probability to the events. With ``echo`` each choice's first event is its prompt (scored too when
    ``logprobs`` is set); ``max_tokens=0`` then generates nothing."""

    prompts: list[list[int]]
    max_tokens: int
    sampler: str
    seeds: list[int]
    stop_ids: list[int]
    stop_strings: list[str]
    logprobs: int | None = None
    echo: bool = False
    cancelled: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._events: asyncio.Queue[Event | Exception | None] = asyncio.Queue()

    def cancel(self) -> None:
        self.cancelled.set()

    def put(self, item: Event | Exception | None) -> None:
        """Hand an event (``None``: done; an exception: failed) to the request, from the worker thread."""
        try:
            self._loop.call_soon_threadsafe(self._events.put_nowait, item)
        except RuntimeError:  # the request's event loop is closed: nobody is listening any more
            self.cancel()

    async def next(self, timeout: float | None = None) -> Event | None:
        """The next event (``None`` once done); re-raises the worker's error; ``TimeoutError`` after ``timeout`` s."""
        item = await asyncio.wait_for(self._events.get(), timeout)
        if isinstance(item, Exception):
            raise item
        return item

    async def events(self) -> AsyncIterator[Event]:
        while (event := await self.next()) is not None:
            yield event


class Engine:
    """Runs jobs one batch at a time in a single thread, so the event loop never waits on the model."""

    def __init__(self, model: Transformer, tokenizer: Tokenizer, max_batch_rows: int = 16,
                 backend: str = "auto") -> None:
        self.model, self.tokenizer, self.max_batch_rows = model, tokenizer, max_batch_rows
        self.backend = check_backend(backend)
        self._pending: deque[Job] = deque()
        self._wake = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="armm-generate", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        """Stop after the current step; queued and running jobs are cancelled."""
        with self._wake:
            self._closed = True
            for job in self._pending:
                job.cancel()
            self._wake.notify()
        if self._thread.is_alive():
            self._thread.join()

    def submit(self, job: Job) -> None:
        with self._wake:
            self._pending.append(job)
            self._wake.notify()

    def _run(self) -> None:
        while (batch := self._next_batch()) is not None:
            try:
                self._generate(batch)
            except Exception as err:  # a bad batch fails its requests, never the worker
                log.exception("generation failed")
                for job in batch:
                    job.put(err)

    def _next_batch(self) -> list[Job] | None:
        """The oldest live job plus every waiting job that can share its ``generate`` call."""
        with self._wake:
            while True:
                while self._pending and self._pending[0].cancelled.is_set():
                    self._pending.popleft()
                if self._closed:
                    return None
                if self._pending:
                    break
                self._wake.wait()
            batch = [self._pending.popleft()]
            for job in list(self._pending):
                if not job.cancelled.is_set() and self._fits(batch + [job]):
                    batch.append(job)
                    self._pending.remove(job)
            return batch

    def _fits(self, batch: list[Job]) -> bool:
        longest = max(len(p) for job in batch for p in job.prompts)
        return (len({job.sampler for job in batch}) == 1
                and sum(len(job.prompts) for job in batch) <= self.max_batch_rows
                and longest + max(job.max_tokens for job in batch) <= self.model.config.max_seq_len)

    def _generate(self, batch: list[Job]) -> None:
        for job in batch:
            self._open(job)
        batch = [job for job in batch if job.max_tokens]
        if not batch:
            return
        rows = [Row(job, index, TextStream(self.tokenizer, job.stop_strings))
                for job in batch for index in range(len(job.prompts))]
        k = max((job.logprobs for job in batch if job.logprobs is not None), default=None)
        sampler = LogprobSampler(build_sampler(batch[0].sampler), k) if k is not None else batch[0].sampler
        steps = generate(
            self.model,
            [row.job.prompts[row.index] for row in rows],
            max_new_tokens=max(job.max_tokens for job in batch),
            sampler=sampler,
            stop_tokens=[row.job.stop_ids for row in rows],
            seed=[row.job.seeds[row.index] for row in rows],
            stream=True,
            backend=self.backend,
        )
        live = set(batch)
        try:
            for step in steps:
                drawn = sampler.take() if isinstance(sampler, LogprobSampler) else [None] * len(rows)
                for row, token, logprob in zip(rows, step, drawn):
                    if row.job in live and row.stream.finish_reason is None and token is not None:
                        row.advance(token, logprob)
                for job in list(live):
                    if job.cancelled.is_set() or all(r.stream.finish_reason for r in rows if r.job is job):
                        live.discard(job)
                        job.put(None)
                if not live or self._closed:
                    break
        finally:
            steps.close()  # frees the KV-cache even when we stop early
        for job in live:  # only when closing
            job.put(None)

    def _open(self, job: Job) -> None:
        """Send each choice's echoed prompt (scored once per distinct prompt, when the job wants log-probabilities),
        and end a job that only scores its prompts (``max_tokens=0``)."""
        if job.echo:
            scored: dict[tuple[int, ...], list[TokenLogprob]] = {}
            for index, prompt in enumerate(job.prompts):
                if job.logprobs is not None and tuple(prompt) not in scored:
                    scored[tuple(prompt)] = prompt_logprobs(self.model, prompt, job.logprobs, self.backend)
                job.put(Event(index, self.tokenizer.decode(prompt), logprobs=scored.get(tuple(prompt), [])))
        if not job.max_tokens:
            for index in range(len(job.prompts)):
                job.put(Event(index, finish_reason="length"))
            job.put(None)


@dataclass
class Row:
    """One choice being generated: its text so far and the log-probabilities of the tokens not yet sent."""

    job: Job
    index: int
    stream: TextStream
    pending: list[TokenLogprob] = field(default_factory=list)

    def advance(self, token: int, logprob: TokenLogprob | None) -> None:
        """Take the next token; send the text it releases, with the log-probabilities of the tokens behind it."""
        job, stream = self.job, self.stream
        if job.logprobs is not None:
            self.pending.append(logprob.keep(job.logprobs))
        text = stream.push(token, is_stop_token=token in job.stop_ids)
        if stream.finish_reason is None and stream.num_tokens == job.max_tokens:
            text += stream.finish("length")
        if text or stream.finish_reason:
            count = stream.num_tokens if stream.finish_reason else 0
            job.put(Event(self.index, text, stream.finish_reason, count, self.pending))
            self.pending = []
