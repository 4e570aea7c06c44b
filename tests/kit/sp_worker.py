"""Moved to :mod:`procs` (the worker and bridge processes, metrics scrape). This alias stays only
until ``tests/faults/faultkit.py`` imports ``procs``; new code imports :mod:`procs`."""

from procs import WORKER_ENV, Worker, free_port, start_worker, stop_worker

RecorderWorker = Worker

__all__ = ["WORKER_ENV", "RecorderWorker", "Worker", "free_port", "start_worker", "stop_worker"]
