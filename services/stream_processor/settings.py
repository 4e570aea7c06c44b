"""Settings of the stream-processor worker (env prefix ``LUPITA_``, frozen)."""

from __future__ import annotations

import socket
from pathlib import Path

from pydantic import Field, field_validator, model_validator

from lupita.config import CommonSettings

from stream_processor.models.asr.settings import AsrSettings
from stream_processor.stages.understanding.core import UnderstandingSettings

# Internal topic (keyed by call_id, same partition count as the sources) on which the recorder
# sends itself "check", "done", "failed" and "purge" commands, so every table write happens
# while processing a record of the call's own partition.
RECORDER_CONTROL = "stream-processor.recorder-control"


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


class RecorderSettings(WorkerSettings):
    """The worker settings plus the recorder agent's rules (env ``LUPITA_RECORDER_...``)."""

    # After the ended event: how long to wait for announced chunks that are still missing
    # before the call is recorded with what arrived (the metadata lists the gaps).
    recorder_grace_seconds: float = Field(default=30.0, gt=0)
    # A call with a started event but no event at all for this long is recorded as it is
    # (the bridge died without an ended event).
    recorder_idle_seconds: float = Field(default=600.0, gt=0)
    # Chunks of a call whose started event never arrives are dropped after this long (without
    # the started event there is no consent, so nothing may be recorded).
    recorder_orphan_seconds: float = Field(default=120.0, gt=0)
    # A recorded/skipped call's state is kept this long, so late redeliveries are recognised
    # and ignored; afterwards the archive's and Postgres' idempotency still hold.
    recorder_state_retention_seconds: float = Field(default=3600.0, gt=0)
    # How often the timer looks for due calls, and the wait before retrying a failed or
    # interrupted finalisation.
    recorder_tick_seconds: float = Field(default=1.0, gt=0)
    recorder_retry_seconds: float = Field(default=15.0, gt=0)
    # Threads doing the blocking work (WAV muxing, S3 upload, Postgres) off the event loop.
    recorder_threads: int = Field(default=4, ge=1, le=64)
    # Multipart upload part size (MiB, S3 minimum 5).
    recorder_part_size_mib: int = Field(default=8, ge=5, le=5120)
    # Object Lock days applied explicitly only if the bucket default did not apply (it should).
    legal_retention_days: int = Field(default=365, ge=1)
    # Longest recording accepted (a bogus timestamp must not become hours of silence).
    recorder_max_call_seconds: float = Field(default=4 * 3600, gt=0)
    # Two chunks of a leg closer than this are treated as contiguous (capture jitter).
    recorder_align_tolerance_ms: float = Field(default=10.0, ge=0)
    # On SIGTERM: how long running finalisations may go on before the worker leaves.
    recorder_drain_seconds: float = Field(default=20.0, ge=0)

    @field_validator("data_dir")
    @classmethod
    def _absolute(cls, v: Path) -> Path:
        return v.expanduser().resolve()

    @model_validator(mode="after")
    def _check(self) -> "RecorderSettings":
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
    def part_size_bytes(self) -> int:
        return self.recorder_part_size_mib * 1024 * 1024


# --- the understanding stages (vad, transcriber) in the same worker ---------------------------------

STAGES = ("recorder", "vad", "transcriber", "understanding")


class PipelineSettings(RecorderSettings, AsrSettings, UnderstandingSettings):
    """The worker with every stage: recorder + vad + transcriber settings (``LUPITA_<FIELD>``).

    ``LUPITA_STAGES`` picks the agents this worker runs (comma list, default all of them)."""

    stages: str = Field(default=",".join(STAGES), pattern=r"^[a-z, ]+$")

    # --- vad (stream_processor.models.vad.VadSettings; see services/stream_processor/README.md) ---
    vad_threshold: float = Field(default=0.5, gt=0, lt=1)
    # Hysteresis: while in speech a window below this is silence (unset: threshold - 0.15).
    vad_neg_threshold: float | None = Field(default=None, gt=0, lt=1)
    vad_min_speech_ms: int = Field(default=250, ge=0)
    vad_min_silence_ms: int = Field(default=300, ge=0)
    vad_speech_pad_ms: int = Field(default=100, ge=0)
    # Longer speech is split; the audio of a segment travels inline in its Kafka record, so
    # at most 30 s (< 1 MB at 16 kHz) and Whisper's 30 s window.
    vad_max_segment_s: float = Field(default=15.0, gt=0, le=30)
    # An open segment longer than this gets PARTIAL snapshots (then every vad_partial_every_s);
    # 0 = no partials.
    vad_partial_after_s: float = Field(default=4.0, ge=0)
    vad_partial_every_s: float = Field(default=2.0, gt=0)
    # Batching: records taken at once (one batched inference per window step over them all).
    vad_batch_max_records: int = Field(default=500, ge=1, le=10000)
    vad_batch_within_ms: float = Field(default=20.0, gt=0, le=1000)
    vad_threads: int = Field(default=1, ge=1, le=16)
    # A gap in a leg's audio longer than this restarts the leg's VAD stream instead of being
    # fed as silence (a bogus timestamp must not cost hours of inference).
    vad_max_gap_s: float = Field(default=60.0, gt=0)
    # Chunks that arrive before the call's started event are held (call time 0 is unknown)
    # up to this many per call; more are dropped (counted).
    vad_max_held_chunks: int = Field(default=200, ge=0)
    # After the ended event: wait this long for missing chunks, then finish the legs anyway.
    vad_grace_seconds: float = Field(default=10.0, gt=0)
    # A call with no event for this long is finished as it is (the bridge died).
    vad_idle_seconds: float = Field(default=600.0, gt=0)
    # Chunks whose started event never arrives are dropped after this long.
    vad_orphan_seconds: float = Field(default=120.0, gt=0)
    # A finished call's tombstone (drops late chunks) is kept this long.
    vad_state_retention_seconds: float = Field(default=3600.0, gt=0)
    vad_tick_seconds: float = Field(default=1.0, gt=0)

    # --- transcriber ---
    # Threads decoding segments (each runs one Transcriber call; the local model's own
    # parallelism is LUPITA_ASR_NUM_WORKERS).
    transcriber_threads: int = Field(default=1, ge=1, le=64)
    # Segments taken from Kafka and not yet transcribed (backpressure beyond that).
    transcriber_max_in_flight: int = Field(default=64, ge=1, le=10000)
    # Skip a partial snapshot when a newer record of the same segment is already waiting.
    transcriber_skip_stale_partials: bool = True
    # How long the per-leg dedupe progress is kept after the leg's end (redeliveries).
    transcriber_state_retention_seconds: float = Field(default=3600.0, gt=0)

    @field_validator("stages")
    @classmethod
    def _stages(cls, v: str) -> str:
        names = [s.strip() for s in v.split(",") if s.strip()]
        unknown = sorted(set(names) - set(STAGES))
        if unknown or not names:
            raise ValueError(f"LUPITA_STAGES must be a comma list of {', '.join(STAGES)}; got {v!r}")
        return ",".join(s for s in STAGES if s in names)

    @model_validator(mode="after")
    def _vad(self) -> "PipelineSettings":
        self.vad_settings()  # raises ValueError with the reason
        return self

    @property
    def stage_set(self) -> frozenset[str]:
        return frozenset(self.stages.split(","))

    def vad_settings(self) -> "VadSettings":
        from stream_processor.models.vad import VadSettings

        return VadSettings(
            threshold=self.vad_threshold,
            neg_threshold=self.vad_neg_threshold,
            min_speech_ms=self.vad_min_speech_ms,
            min_silence_ms=self.vad_min_silence_ms,
            speech_pad_ms=self.vad_speech_pad_ms,
            max_segment_s=self.vad_max_segment_s,
        )
