"""Settings of the stream-processor worker (env prefix ``LUPITA_``, frozen).

:class:`WorkerSettings` is the worker's own (the Faust app, its consumer group and tables, the
probes, which stages run); each stage has its own class in ``stages/<stage>/settings.py`` and its
agent receives only that. :class:`PipelineSettings` is all of them together, for the tools that
run every stage in one process (``lupita replay``) and for the tests.
"""

from __future__ import annotations

import socket
from pathlib import Path

from pydantic import Field, field_validator, model_validator

from lupita.config import CommonSettings

from stream_processor.stages.recorder.settings import RecorderSettings
from stream_processor.stages.transcriber.settings import TranscriberSettings
from stream_processor.stages.understanding.settings import UnderstandingSettings
from stream_processor.stages.vad.settings import VadStageSettings

# The stages a worker can run, in pipeline order (LUPITA_STAGES picks among them).
STAGES = ("recorder", "vad", "transcriber", "understanding")
STAGE_SETTINGS = {
    "recorder": RecorderSettings,
    "vad": VadStageSettings,
    "transcriber": TranscriberSettings,
    "understanding": UnderstandingSettings,
}


class WorkerSettings(CommonSettings):
    """Everything the Faust worker reads from its environment (``LUPITA_<FIELD>``)."""

    # Faust application id = Kafka consumer group and changelog-topic prefix. The topic
    # prefix (LUPITA_TOPIC_PREFIX) is put in front of it, so environments never share a group.
    app_id: str = Field(default="stream-processor", pattern=r"^[A-Za-z0-9._-]{1,100}$")
    # Table store: "memory://" (rebuilt from the changelog at start) or "rocksdb://" (rocksdict,
    # kept on disk under data_dir, faster restarts for large state).
    table_store: str = Field(default="memory://", pattern=r"^(memory|rocksdb)://$")
    # Faust data directory (rocksdb tables, worker state).
    data_dir: Path = Path("/var/tmp/lupita-stream-processor")
    # Prometheus /metrics plus /livez and /readyz on this port (0 = off).
    metrics_port: int = Field(default=9102, ge=0, le=65535)
    metrics_host: str = "0.0.0.0"
    # Kafka consumer group timing (seconds). Short values make joins and tests fast; the
    # defaults suit production pods.
    kafka_session_timeout_seconds: float = Field(default=30.0, gt=0)
    kafka_heartbeat_seconds: float = Field(default=3.0, gt=0)
    kafka_rebalance_timeout_seconds: float = Field(default=30.0, gt=0)
    kafka_commit_interval_seconds: float = Field(default=2.0, gt=0)
    # Standby table replicas on other workers (faster fail-over, more memory).
    table_standby_replicas: int = Field(default=1, ge=0)
    # Name of this worker in logs (default: the host name, i.e. the pod name).
    instance_name: str = Field(default_factory=socket.gethostname)
    # Apply the Postgres migrations at start (idempotent, advisory-locked).
    migrate_on_start: bool = True
    # The agents this worker runs (comma list of STAGES; default all of them).
    stages: str = Field(default=",".join(STAGES), pattern=r"^[a-z, ]+$")
    # On SIGTERM: how long running work (recordings being finalised, analyses, alert writes) may
    # go on before the worker leaves. (The name is older than the other stages.)
    recorder_drain_seconds: float = Field(default=20.0, ge=0)

    @field_validator("data_dir")
    @classmethod
    def _absolute(cls, v: Path) -> Path:
        return v.expanduser().resolve()

    @field_validator("stages")
    @classmethod
    def _stages(cls, v: str) -> str:
        names = [s.strip() for s in v.split(",") if s.strip()]
        unknown = sorted(set(names) - set(STAGES))
        if unknown or not names:
            raise ValueError(f"LUPITA_STAGES must be a comma list of {', '.join(STAGES)}; got {v!r}")
        return ",".join(s for s in STAGES if s in names)

    @model_validator(mode="after")
    def _check(self) -> "WorkerSettings":
        if self.kafka_heartbeat_seconds * 3 > self.kafka_session_timeout_seconds:
            raise ValueError(
                "LUPITA_KAFKA_HEARTBEAT_SECONDS must be at most a third of "
                "LUPITA_KAFKA_SESSION_TIMEOUT_SECONDS"
            )
        return self

    @property
    def faust_app_id(self) -> str:
        return f"{self.topic_prefix}{self.app_id}"

    @property
    def stage_set(self) -> frozenset[str]:
        return frozenset(self.stages.split(","))


class PipelineSettings(WorkerSettings, RecorderSettings, VadStageSettings, TranscriberSettings, UnderstandingSettings):
    """The worker's settings and every stage's, in one object (``LUPITA_<FIELD>``)."""
