"""Dynamic micro-batching: requests that arrive close together share one model pass, off the event loop.

One `MicroBatcher` per model owns one worker thread, the only caller of its `Predictor`. A request handler
`await`s `submit(...)`: its job goes on a thread-safe queue and the handler's coroutine sleeps on an asyncio
future, so the event loop keeps accepting and parsing other requests while the model runs. The worker takes
the oldest job, then keeps taking jobs until the batch holds `max_batch_size` texts or `max_wait_ms` has
passed since it took the first; jobs that queued while the previous pass ran join at once, so under load
batches fill without waiting. It runs the texts as one pass (a job larger than `max_batch_size` runs alone,
in passes of that size), decodes each job's rows with the job's own `answer`, and settles each job's future
on its event loop. A job whose `check` raises fails alone; the rest of its batch is answered.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from nlptransfer.inference import Predictor
from nlptransfer.serving.outputs import ModelPass
from nlptransfer.serving.requests import Text

_STOP = object()


@dataclass(eq=False)
class Job:
    texts: list[Text]
    answer: Callable[[ModelPass, int], object]  # one text's answer from its row of a pass
    check: Callable[[], None] | None = None  # run in the worker before the pass; raising fails this job only
    future: asyncio.Future | None = None
    loop: asyncio.AbstractEventLoop | None = None
    queued_at: float = field(default_factory=time.perf_counter)


BatchObserver = Callable[[int, float, list[float]], None]
"""(texts in the pass, seconds the pass took, each job's seconds in the queue) -> None, for metrics."""


class MicroBatcher:
    """Answers jobs of texts with one `Predictor`, batching jobs that arrive within `max_wait_ms`."""

    def __init__(
        self,
        predictor: Predictor,
        max_batch_size: int = 16,
        max_wait_ms: float = 2.0,
        on_batch: BatchObserver | None = None,
    ):
        self.predictor = predictor
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000
        self.on_batch = on_batch
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._work, name=f"batcher-{predictor.name}", daemon=True)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Answer every job queued so far, then end the worker."""
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join(timeout)

    async def submit(
        self, texts: list[Text], answer: Callable[[ModelPass, int], object], check: Callable[[], None] | None = None
    ) -> list:
        """Each text's answer, once a pass has run it; the exception of `check` or of the pass otherwise."""
        loop = asyncio.get_running_loop()
        job = Job(texts, answer, check, loop.create_future(), loop)
        self._queue.put(job)
        return await job.future

    # ---- the worker thread ------------------------------------------------------------------------------
    def _work(self) -> None:
        waiting = None  # a job taken from the queue that did not fit the last batch
        while True:
            first = waiting if waiting is not None else self._queue.get()
            if first is _STOP:
                return
            jobs, waiting = self._collect(first)
            self._run(jobs)

    def _collect(self, first: Job) -> tuple[list[Job], object]:
        """`first` and the jobs that join it: (the batch, a job taken that did not fit, or None)."""
        jobs, size = [first], len(first.texts)
        deadline = time.monotonic() + self.max_wait
        while size < self.max_batch_size:
            try:
                remaining = deadline - time.monotonic()
                job = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if job is _STOP or size + len(job.texts) > self.max_batch_size:
                return jobs, job
            jobs.append(job)
            size += len(job.texts)
        return jobs, None

    def _run(self, jobs: list[Job]) -> None:
        ready = []
        for job in jobs:
            try:
                if job.check is not None:
                    job.check()
            except Exception as err:  # the job's own problem goes back to its request
                self._settle(job, error=err)
            else:
                ready.append(job)
        answers: dict[Job, list] = {job: [] for job in ready}
        rows = [(job, i) for job in ready for i in range(len(job.texts))]
        waits = [time.perf_counter() - job.queued_at for job in ready]
        for start in range(0, len(rows), self.max_batch_size):
            chunk = [(job, i) for job, i in rows[start : start + self.max_batch_size] if job in answers]
            if not chunk:
                continue
            started = time.perf_counter()
            try:
                out = ModelPass(*self.predictor.logits([job.texts[i] for job, i in chunk]))
                for row, (job, _) in enumerate(chunk):
                    answers[job].append(job.answer(out, row))
            except Exception as err:  # a failed pass fails its requests, never the worker
                for job in dict.fromkeys(job for job, _ in chunk):
                    answers.pop(job, None)
                    self._settle(job, error=err)
            if self.on_batch is not None:
                self.on_batch(len(chunk), time.perf_counter() - started, waits)
            waits = []
        for job, answer in answers.items():
            self._settle(job, result=answer)

    @staticmethod
    def _settle(job: Job, result=None, error: BaseException | None = None) -> None:
        def settle() -> None:
            if job.future.done():  # the client went away and its request was cancelled
                return
            if error is not None:
                job.future.set_exception(error)
            else:
                job.future.set_result(result)

        try:
            job.loop.call_soon_threadsafe(settle)
        except RuntimeError:  # the event loop has closed: nobody is waiting any more
            pass
