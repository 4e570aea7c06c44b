"""Settings of the recorder stage (``LUPITA_RECORDER_*``, ``LUPITA_LEGAL_RETENTION_DAYS``; frozen)."""

from __future__ import annotations

from pydantic import Field

from stream_processor.callstate import CallTimelineSettings


class RecorderSettings(CallTimelineSettings):
    """What the recorder agent and its archive read: its waits, threads and upload sizes, and
    the call timeline rules it shares with the vad stage."""

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

    @property
    def part_size_bytes(self) -> int:
        return self.recorder_part_size_mib * 1024 * 1024
