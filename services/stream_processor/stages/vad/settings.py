"""Settings of the vad stage (``LUPITA_VAD_*``; frozen). The segmentation parameters are
:class:`stream_processor.models.vad.VadSettings`' (declared there once); this class adds how the
stage batches, publishes partials and finishes calls."""

from __future__ import annotations

from pydantic import Field

from stream_processor.callstate import CallTimelineSettings
from stream_processor.models.vad import VadSettings


class VadStageSettings(VadSettings, CallTimelineSettings):
    """What the vad agent and its pure core read."""

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
