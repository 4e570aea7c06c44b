"""Decode scheduling by value, not arrival (plain code: no Kafka, no Faust).

The transcriber's decodes used to go to a FIFO thread pool, so under load a person's final waited
behind the agent's finals and everybody's partials. :class:`DecodeScheduler` is the thread pool
that replaces it: ``threads`` workers, each taking the **most valuable** waiting job when it is
free:

1. the person's finals (alerts and facts come from that leg),
2. the agent's (Lupita's) finals,
3. partial hypotheses (the person's first), and only while no final waits: a partial whose turn
   comes is still run, but a partial submitted while finals wait is refused at once
   (:meth:`DecodeScheduler.submit` returns None; the caller counts it as skipped — a partial is a
   hint that the final replaces, it is never owed).

Within one class, jobs run in submission order. Nothing final is ever dropped: under sustained
overload the agent's finals simply wait behind the person's (possibly until after the call), and
every such decision is counted (:data:`DECISIONS`): ``agent_waited`` each time a person final is
taken while an agent final waits, ``partial_skipped`` for a partial refused because a final waits,
``partial_cancelled`` for a queued partial its caller gave up on before it ran
(``wanted()`` False), ``person_thread`` for a person final a person thread took. :data:`WAITING` is the number of jobs waiting per class and
:data:`QUEUE_SECONDS` the time a job waited before a worker took it.

**Person threads** (``person_threads`` > 0): that many more workers take the person's finals
only. A worker cannot be taken off a decode it has started, so without them a person's final that
arrives while every worker decodes an agent's final, a packed window or a partial waits for the
end of that decode (seconds under load), priority or not. A person thread is free for it unless
another person final holds it; while no person final waits it sleeps (it costs no CPU), and the
general workers keep every core busy.

A job may be **packed** by the caller (several segments of one leg in one decode); the scheduler
only sees one job of its class.

**Batching** (``max_batch`` > 1, :meth:`DecodeScheduler.submit_batch`): a free worker that takes a
batchable final also takes the other batchable jobs waiting in the same class with the same key
(the caller's: the backend and the call vocabulary), oldest first, up to ``max_batch`` in all,
and runs them as one ``batch_fn([request, ...])`` (one CTranslate2 call for all their windows).
The backlog sizes the batch: one waiting final is decoded alone at once, never held back to wait
for company. A batch never mixes classes: a person's final is never slowed down by an agent's.
If the batched call fails, each request is run alone so one bad request cannot fail the others.
:data:`BATCH_REQUESTS` is the number of requests per batch.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable

from stream_processor.stages.transcriber.metrics import BATCH_REQUESTS, DECISIONS, QUEUE_SECONDS, WAITING

PERSON_FINAL, AGENT_FINAL, PERSON_PARTIAL, AGENT_PARTIAL = 0, 1, 2, 3
CLASS_NAMES = {PERSON_FINAL: "person_final", AGENT_FINAL: "agent_final",
               PERSON_PARTIAL: "person_partial", AGENT_PARTIAL: "agent_partial"}
FINALS = (PERSON_FINAL, AGENT_FINAL)

def job_class(*, person: bool, final: bool) -> int:
    if final:
        return PERSON_FINAL if person else AGENT_FINAL
    return PERSON_PARTIAL if person else AGENT_PARTIAL


@dataclass(order=True)
class _Job:
    cls: int
    order: int
    fn: Callable[..., Any] = field(compare=False)
    args: tuple = field(compare=False)
    future: Future = field(compare=False)
    wanted: Callable[[], bool] | None = field(compare=False, default=None)
    queued_at: float = field(compare=False, default=0.0)
    batch_key: Any = field(compare=False, default=None)  # set: fn takes a list of requests (args[0] each)


class DecodeScheduler:
    """A thread pool that runs the most valuable waiting decode first (see the module docstring).

    ``on_start(cls)`` (optional) is called in the worker thread right before a job runs, for
    tests and tracing."""

    def __init__(self, threads: int = 1, *, name: str = "transcriber",
                 on_start: Callable[[int], None] | None = None, max_batch: int = 1,
                 person_threads: int = 0) -> None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        if person_threads < 0:
            raise ValueError(f"person_threads must be >= 0, got {person_threads}")
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.max_batch = max_batch
        self._heap: list[_Job] = []
        self._cv = threading.Condition()
        self._seq = itertools.count()
        self._closed = False
        self._on_start = on_start
        self._threads = [threading.Thread(target=self._run, args=(False,), name=f"{name}-{i}", daemon=True)
                         for i in range(threads)]
        self._threads += [threading.Thread(target=self._run, args=(True,), name=f"{name}-person-{i}", daemon=True)
                          for i in range(person_threads)]
        for t in self._threads:
            t.start()

    # -- submitting ----------------------------------------------------------------------------

    def submit(self, cls: int, fn: Callable[..., Any], *args: Any,
               wanted: Callable[[], bool] | None = None) -> Future | None:
        """Queue ``fn(*args)`` in class ``cls``; a concurrent future of its result. A partial is
        refused (None) while a final waits. ``wanted`` is asked (in the worker) before the job
        runs: False cancels its future instead of running it (partials only)."""
        if cls not in CLASS_NAMES:
            raise ValueError(f"unknown decode class {cls!r}")
        fut: Future = Future()
        with self._cv:
            if self._closed:
                raise RuntimeError("the decode scheduler is shut down")
            if cls not in FINALS and any(j.cls in FINALS for j in self._heap):
                DECISIONS.labels("partial_skipped").inc()
                return None
            heapq.heappush(self._heap, _Job(cls, next(self._seq), fn, args, fut, wanted, time.perf_counter()))
            WAITING.labels(CLASS_NAMES[cls]).inc()
            self._cv.notify_all()  # a person thread must not take the wake-up a general worker needs
        return fut

    def submit_batch(self, cls: int, batch_fn: Callable[[list[Any]], list[Any]], request: Any, *,
                     key: Any) -> Future:
        """Queue ``request`` (a final) to run as ``batch_fn([request, ...])[i]``, together with the
        other batchable requests waiting in its class with an equal ``key`` when a worker takes
        it (at most ``max_batch``); a concurrent future of this request's own result."""
        if cls not in FINALS:
            raise ValueError("only finals are batched")
        fut: Future = Future()
        with self._cv:
            if self._closed:
                raise RuntimeError("the decode scheduler is shut down")
            heapq.heappush(self._heap, _Job(cls, next(self._seq), batch_fn, (request,), fut, None,
                                            time.perf_counter(), batch_key=key))
            WAITING.labels(CLASS_NAMES[cls]).inc()
            self._cv.notify_all()  # a person thread must not take the wake-up a general worker needs
        return fut

    def waiting(self) -> dict[str, int]:
        """Jobs waiting per class name (a snapshot)."""
        with self._cv:
            counts = {name: 0 for name in CLASS_NAMES.values()}
            for j in self._heap:
                counts[CLASS_NAMES[j.cls]] += 1
            return counts

    # -- workers -------------------------------------------------------------------------------

    def _take(self, person_only: bool = False) -> list[_Job] | None:
        """The most valuable waiting job, and the batchable jobs that go with it (see the module
        docstring); None once shut down. A person thread (``person_only``) takes person finals only."""
        def ready() -> bool:  # the heap's first job is its most valuable: a person final if any waits
            return bool(self._heap) and (not person_only or self._heap[0].cls == PERSON_FINAL)

        with self._cv:
            while not ready() and not self._closed:
                self._cv.wait()
            if not ready():
                return None
            job = heapq.heappop(self._heap)
            WAITING.labels(CLASS_NAMES[job.cls]).dec()
            if job.cls == PERSON_FINAL and any(j.cls == AGENT_FINAL for j in self._heap):
                DECISIONS.labels("agent_waited").inc()
            if person_only:
                DECISIONS.labels("person_thread").inc()
            jobs = [job]
            if job.batch_key is not None and self.max_batch > 1:
                rest = []
                for j in sorted(self._heap):
                    if len(jobs) < self.max_batch and j.cls == job.cls and j.batch_key is not None \
                            and j.batch_key == job.batch_key:
                        jobs.append(j)
                        WAITING.labels(CLASS_NAMES[j.cls]).dec()
                    else:
                        rest.append(j)
                if len(jobs) > 1:
                    heapq.heapify(rest)
                    self._heap = rest
            return jobs

    def _run_batch(self, jobs: list[_Job]) -> None:
        """``batch_fn`` of the first job on every job's request; each future gets its own result.
        A failed batch of several is run again one request at a time."""
        live = [j for j in jobs if j.future.set_running_or_notify_cancel()]
        if not live:
            return
        BATCH_REQUESTS.observe(len(live))
        if self._on_start is not None:
            self._on_start(live[0].cls)
        try:
            results = live[0].fn([j.args[0] for j in live])
            if len(results) != len(live):
                raise RuntimeError(f"batch of {len(live)} requests returned {len(results)} results")
        except BaseException as exc:  # noqa: BLE001 - handed to the callers through their futures
            if len(live) == 1:
                live[0].future.set_exception(exc)
                return
            for j in live:  # one bad request must not fail the others
                try:
                    j.future.set_result(j.fn([j.args[0]])[0])
                except BaseException as one:  # noqa: BLE001
                    j.future.set_exception(one)
            return
        for j, r in zip(live, results):
            j.future.set_result(r)

    def _run(self, person_only: bool = False) -> None:
        while True:
            jobs = self._take(person_only)
            if jobs is None:
                return
            now = time.perf_counter()
            for j in jobs:
                QUEUE_SECONDS.labels(CLASS_NAMES[j.cls]).observe(now - j.queued_at)
            job = jobs[0]
            if job.batch_key is not None:
                self._run_batch(jobs)
                continue
            if job.wanted is not None and not job.wanted():
                DECISIONS.labels("partial_cancelled").inc()
                job.future.cancel()
                continue
            if not job.future.set_running_or_notify_cancel():
                continue
            try:
                if self._on_start is not None:
                    self._on_start(job.cls)
                result = job.fn(*job.args)
            except BaseException as exc:  # noqa: BLE001 - handed to the caller through the future
                job.future.set_exception(exc)
            else:
                job.future.set_result(result)

    def shutdown(self, *, wait: bool = False, cancel_futures: bool = True) -> None:
        """Stop taking jobs; queued ones are cancelled (``cancel_futures``) or still run."""
        with self._cv:
            self._closed = True
            if cancel_futures:
                for j in self._heap:
                    WAITING.labels(CLASS_NAMES[j.cls]).dec()
                    j.future.cancel()
                self._heap.clear()
            self._cv.notify_all()
        if wait:
            for t in self._threads:
                t.join()
