"""``lupita worker``: run the stream-processor Faust worker until SIGTERM; ``LUPITA_STAGES`` picks
which of the stages below it runs (default: all, in one process).

Start-up, in order: settings (the worker's and each chosen stage's; exit 2 naming every bad
variable), metrics/probe endpoint, Postgres migrations (``LUPITA_MIGRATE_ON_START``), the Kafka
topics the chosen stages read and write, a check of the S3 buckets (recorder: the legal one must
be versioned with a COMPLIANCE Object Lock default), then one Faust app with the chosen agents.
SIGTERM: running work gets ``LUPITA_RECORDER_DRAIN_SECONDS`` to finish, offsets are committed and
the worker leaves the group.
"""

from __future__ import annotations

import argparse
import importlib
import logging
from dataclasses import dataclass
from typing import Any, Callable

from pydantic import ValidationError

log = logging.getLogger("stream_processor")

@dataclass(frozen=True)
class Stage:
    agent: str  # its agent's module; its TOPICS (read and written) are created at start-up if missing
    postgres: bool  # writes Postgres (migrations applied at start-up)
    start: Callable[..., Any]  # (settings, app, probes, stores, worker) -> the agent


def _recorder(settings: Any, app: Any, probes: Any, stores: dict[str, Any], worker: Any) -> Any:
    from stream_processor.stages.recorder.agent import Recorder

    return Recorder(settings, app=app, archive=stores["archive"], store=stores["calls"], probes=probes,
                    worker_name=worker.instance_name, drain_seconds=worker.recorder_drain_seconds)


def _vad(settings: Any, app: Any, probes: Any, stores: dict[str, Any], worker: Any) -> Any:
    from stream_processor.stages.vad.agent import VadAgent

    return VadAgent(settings, app=app, probes=probes)


def _transcriber(settings: Any, app: Any, probes: Any, stores: dict[str, Any], worker: Any) -> Any:
    from stream_processor.stages.transcriber.agent import TranscriberAgent

    return TranscriberAgent(settings, app=app, drain_seconds=worker.recorder_drain_seconds)


def _understanding(settings: Any, app: Any, probes: Any, stores: dict[str, Any], worker: Any) -> Any:
    from stream_processor.stages.understanding.agent import UnderstandingStage

    return UnderstandingStage(settings, app=app, drain_seconds=worker.recorder_drain_seconds)


STAGES: dict[str, Stage] = {
    # audio.chunks + call.lifecycle -> stereo WAV in the S3 legal archive (Object Lock) + companion_calls row
    "recorder": Stage("stream_processor.stages.recorder.agent", True, _recorder),
    # audio.chunks + call.lifecycle -> speech.segments (batched streaming Silero VAD per call leg)
    "vad": Stage("stream_processor.stages.vad.agent", False, _vad),
    # speech.segments -> transcripts (partials, then finals with word timings in call time)
    "transcriber": Stage("stream_processor.stages.transcriber.agent", False, _transcriber),
    # transcripts + call.lifecycle -> alerts (live); at call end analysis -> Weaviate + Postgres, call.analysis
    "understanding": Stage("stream_processor.stages.understanding.agent", True, _understanding),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__.splitlines()[0]
    parser.add_argument("--app-id", help="Faust app id / consumer group, after the topic prefix (LUPITA_APP_ID)")
    parser.add_argument("--metrics-port", type=int, help="/metrics, /livez, /readyz port; 0 = off (LUPITA_METRICS_PORT, default 9102)")
    parser.add_argument("--table-store", choices=("memory://", "rocksdb://"), help="table store (LUPITA_TABLE_STORE)")
    parser.add_argument("--data-dir", help="Faust data directory (LUPITA_DATA_DIR)")


def build_settings(args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    """The worker's settings and each chosen stage's; raises :class:`SettingsError` listing
    every bad variable of all of them."""
    from stream_processor.settings import STAGE_SETTINGS, WorkerSettings

    overrides = {
        "app_id": getattr(args, "app_id", None),
        "metrics_port": getattr(args, "metrics_port", None),
        "table_store": getattr(args, "table_store", None),
        "data_dir": getattr(args, "data_dir", None),
    }
    problems: list[str] = []
    try:
        worker = WorkerSettings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        raise SettingsError(_problems(exc)) from None
    stages: dict[str, Any] = {}
    for name in sorted(worker.stage_set, key=list(STAGES).index):
        try:
            stages[name] = STAGE_SETTINGS[name]()
        except ValidationError as exc:
            problems.extend(p for p in _problems(exc) if p not in problems)
    if problems:
        raise SettingsError(problems)
    return worker, stages


class SettingsError(ValueError):
    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def _problems(exc: ValidationError) -> list[str]:
    # errors without their input: the input may hold secrets
    return [(f"LUPITA_{str(e['loc'][0]).upper()}: " if e["loc"] else "") + e["msg"]
            for e in exc.errors(include_input=False, include_url=False)]


def run(args: argparse.Namespace) -> int:
    from lupita.logs import setup_logging

    setup_logging("stream-processor")
    try:
        worker, stages = build_settings(args)
    except SettingsError as exc:
        log.error("invalid settings", extra={"stage": "startup", "errors": exc.problems})
        return 2
    setup_logging("stream-processor", worker.log_level)
    return serve(worker, stages)


def serve(worker: Any, stages: dict[str, Any]) -> int:
    """Prepare the stores and run the Faust worker in this (main) thread until it stops."""
    import faust

    from lupita.db import MigrationError, migrate
    from lupita.logs import setup_logging
    from lupita.topics import ensure_topics

    from stream_processor import faust_kit
    from stream_processor import metrics as m
    from stream_processor.stores.archive import Archive, ArchiveConfigError, s3_client
    from stream_processor.stores.calls_db import CallStore

    agents = [importlib.import_module(STAGES[name].agent) for name in stages]
    topic_names = tuple(dict.fromkeys(t for agent in agents for t in agent.TOPICS))
    # Faust names a table's changelog "<app id>-<table>-changelog" (after the topic prefix)
    changelogs = tuple(f"{worker.app_id}-{table}-changelog" for agent in agents for table in agent.TABLES)
    probes = m.Probes()
    m.serve(worker.metrics_port, worker.metrics_host, probes)
    dsn = worker.postgres_dsn.get_secret_value()
    recorder = stages.get("recorder")
    stores: dict[str, Any] = {}
    try:
        if worker.migrate_on_start and any(STAGES[name].postgres for name in stages):
            applied = migrate(dsn)
            log.info("migrations", extra={"stage": "startup", "applied": applied})
        created = ensure_topics(worker, names=topic_names)
        # The tables' changelogs too, before any record is read: a changelog Faust creates itself
        # may not be in the producer's metadata yet when the first record of a fresh deployment
        # arrives ("changelog topic ... has 0 partitions": PartitionsMismatch on every record).
        created += ensure_topics(worker, names=changelogs, configs={"cleanup.policy": "compact"})
        if created:
            log.info("topics created", extra={"stage": "startup", "topics": created})
        if recorder is not None:
            archive = stores["archive"] = Archive(
                s3_client(recorder, max_pool=max(10, recorder.recorder_threads * 2)),
                legal_bucket=recorder.s3_legal_bucket,
                active_bucket=recorder.s3_active_bucket,
                part_size=recorder.part_size_bytes,
                retention_days=recorder.legal_retention_days,
            )
            log.info("archive checked", extra={"stage": "startup", **archive.check_buckets()})
    except (MigrationError, ArchiveConfigError) as exc:
        log.error("start-up check failed", extra={"stage": "startup", "error": str(exc)})
        return 3
    except Exception as exc:
        log.error("a store is unreachable at start-up",
                  extra={"stage": "startup", "error": f"{type(exc).__name__}: {exc}"[:500]})
        return 3
    worker.data_dir.mkdir(parents=True, exist_ok=True)
    if recorder is not None:
        stores["calls"] = CallStore(dsn)
    app = faust_kit.build_app(worker)
    faust_kit.track_readiness(app, probes)
    for name, settings in stages.items():
        STAGES[name].start(settings, app, probes, stores, worker)
    log.info(
        "worker starting",
        extra={"stage": "startup", "app_id": worker.faust_app_id, "table_store": worker.table_store,
               "stages": list(stages), "topics": [worker.topic(t) for t in topic_names]},
    )

    class Worker(faust.Worker):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.spinner = None  # a terminal spinner has no place in JSON logs

        def on_setup_root_logger(self, logger: logging.Logger, level: int) -> None:
            setup_logging("stream-processor", worker.log_level)

    runner = Worker(app, loglevel=worker.log_level, quiet=True, redirect_stdouts=False)
    code = 0
    try:
        runner.execute_from_commandline()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        if "calls" in stores:
            stores["calls"].close()
    log.info("worker stopped", extra={"stage": "shutdown", "exit_code": code})
    return code
