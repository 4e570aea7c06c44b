"""``lupita worker``: run the stream-processor Faust worker (agents ``recorder``, ``vad``, ``transcriber``;
``LUPITA_STAGES`` picks them) until SIGTERM.

Start-up, in order: settings (exit 2 if invalid), metrics/probe endpoint, Postgres migrations
(``LUPITA_MIGRATE_ON_START``), the Kafka topics it reads and writes, a check of the S3 buckets
(the legal one must be versioned with a COMPLIANCE Object Lock default), then the Faust worker.
SIGTERM: running finalisations get ``LUPITA_RECORDER_DRAIN_SECONDS`` to finish, offsets are
committed and the worker leaves the group.
"""

from __future__ import annotations

import argparse
import logging

from pydantic import ValidationError

log = logging.getLogger("stream_processor")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__.splitlines()[0]
    parser.add_argument("--app-id", help="Faust app id / consumer group, after the topic prefix (LUPITA_APP_ID)")
    parser.add_argument("--metrics-port", type=int, help="/metrics, /livez, /readyz port; 0 = off (LUPITA_METRICS_PORT, default 9102)")
    parser.add_argument("--table-store", choices=("memory://", "rocksdb://"), help="table store (LUPITA_TABLE_STORE)")
    parser.add_argument("--data-dir", help="Faust data directory (LUPITA_DATA_DIR)")


def build_settings(args: argparse.Namespace):
    from stream_processor.settings import PipelineSettings

    overrides = {
        "app_id": getattr(args, "app_id", None),
        "metrics_port": getattr(args, "metrics_port", None),
        "table_store": getattr(args, "table_store", None),
        "data_dir": getattr(args, "data_dir", None),
    }
    return PipelineSettings(**{k: v for k, v in overrides.items() if v is not None})


def run(args: argparse.Namespace) -> int:
    from lupita.logs import setup_logging

    setup_logging("stream-processor")
    try:
        settings = build_settings(args)
    except ValidationError as exc:
        # errors without their input: the input may hold secrets
        problems = [
            (f"LUPITA_{str(e['loc'][0]).upper()}: " if e["loc"] else "") + e["msg"]
            for e in exc.errors(include_input=False, include_url=False)
        ]
        log.error("invalid settings", extra={"stage": "startup", "errors": problems})
        return 2
    setup_logging("stream-processor", settings.log_level)
    return serve(settings)


def serve(settings) -> int:
    """Prepare the stores and run the Faust worker in this (main) thread until it stops."""
    import faust

    from lupita.db import MigrationError, migrate
    from lupita.logs import setup_logging
    from lupita.topics import (
        ALERTS, AUDIO_CHUNKS, CALL_ANALYSIS, CALL_LIFECYCLE, SPEECH_SEGMENTS, TRANSCRIPTS, ensure_topics,
    )

    from stream_processor import metrics as m
    from stream_processor.stores.archive import Archive, ArchiveConfigError, s3_client
    from stream_processor.stores.calls_db import CallStore
    from stream_processor.stages.recorder.agent import DEAD_LETTERS, Recorder, build_app
    from stream_processor.settings import RECORDER_CONTROL
    from stream_processor.stages.transcriber.agent import TRANSCRIBER_DEAD_LETTERS, TranscriberAgent
    from stream_processor.stages.understanding.agent import UNDERSTANDING_DEAD_LETTERS, UnderstandingStage
    from stream_processor.stages.vad.agent import VAD_CONTROL, VAD_DEAD_LETTERS, VadAgent

    stages = settings.stage_set
    recording = "recorder" in stages
    stage_topics = {
        "recorder": (AUDIO_CHUNKS, CALL_LIFECYCLE, RECORDER_CONTROL, DEAD_LETTERS),
        "vad": (AUDIO_CHUNKS, CALL_LIFECYCLE, VAD_CONTROL, VAD_DEAD_LETTERS, SPEECH_SEGMENTS),
        "transcriber": (SPEECH_SEGMENTS, TRANSCRIPTS, TRANSCRIBER_DEAD_LETTERS),
        "understanding": (TRANSCRIPTS, CALL_LIFECYCLE, ALERTS, CALL_ANALYSIS, UNDERSTANDING_DEAD_LETTERS),
    }
    topic_names = tuple(dict.fromkeys(t for stage in sorted(stages) for t in stage_topics[stage]))

    probes = m.Probes()
    m.serve(settings.metrics_port, settings.metrics_host, probes)
    dsn = settings.postgres_dsn.get_secret_value()
    try:
        # the recorder and the understanding stage write Postgres (migrations 0001, 0002)
        if (recording or "understanding" in stages) and settings.migrate_on_start:
            applied = migrate(dsn)
            log.info("migrations", extra={"stage": "startup", "applied": applied})
        created = ensure_topics(settings, names=topic_names)
        if created:
            log.info("topics created", extra={"stage": "startup", "topics": created})
        archive = Archive(
            s3_client(settings, max_pool=max(10, settings.recorder_threads * 2)),
            legal_bucket=settings.s3_legal_bucket,
            active_bucket=settings.s3_active_bucket,
            part_size=settings.part_size_bytes,
            retention_days=settings.legal_retention_days,
        ) if recording else None
        if archive is not None:
            log.info("archive checked", extra={"stage": "startup", **archive.check_buckets()})
    except (MigrationError, ArchiveConfigError) as exc:
        log.error("start-up check failed", extra={"stage": "startup", "error": str(exc)})
        return 3
    except Exception as exc:
        log.error("a store is unreachable at start-up",
                  extra={"stage": "startup", "error": f"{type(exc).__name__}: {exc}"[:500]})
        return 3
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    store = CallStore(dsn) if recording else None
    app = build_app(settings)
    if recording:
        Recorder(settings, archive=archive, store=store, probes=probes, app=app)
    if "vad" in stages:
        VadAgent(settings, app=app, probes=probes)
    if "transcriber" in stages:
        TranscriberAgent(settings, app=app, probes=probes)
    if "understanding" in stages:
        UnderstandingStage(settings, app=app, probes=probes)
    log.info(
        "worker starting",
        extra={"stage": "startup", "app_id": settings.faust_app_id, "table_store": settings.table_store,
               "stages": sorted(stages), "topics": [settings.topic(t) for t in topic_names]},
    )

    class Worker(faust.Worker):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self.spinner = None  # a terminal spinner has no place in JSON logs

        def on_setup_root_logger(self, logger: logging.Logger, level: int) -> None:
            setup_logging("stream-processor", settings.log_level)

    worker = Worker(app, loglevel=settings.log_level, quiet=True, redirect_stdouts=False)
    code = 0
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        if store is not None:
            store.close()
    log.info("worker stopped", extra={"stage": "shutdown", "exit_code": code})
    return code
