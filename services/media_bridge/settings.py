"""Settings of the media-bridge service (env prefix ``LUPITA_``, frozen)."""

from __future__ import annotations

import math
import socket

from pydantic import Field, SecretStr, model_validator

from lupita.config import CommonSettings

# The frame duration telephony adapters send (Chime, Twilio, VAPI): used only to check that
# the initial credits let both legs fill a whole chunk before the first ack comes back.
TYPICAL_FRAME_MS = 20


class BridgeSettings(CommonSettings):
    """Everything the bridge reads from its environment (``LUPITA_<FIELD>``)."""

    # gRPC listen address; port 0 = pick a free port (tests).
    grpc_host: str = "0.0.0.0"
    grpc_port: int = Field(default=50061, ge=0, le=65535)
    # Prometheus /metrics listen address and port (0 = disabled). Under host networking set the
    # address to the node's (the chart: status.hostIP), else it listens on every node address.
    metrics_host: str = "0.0.0.0"
    metrics_port: int = Field(default=9101, ge=0, le=65535)
    # Audio per Kafka record and leg: a chunk closes once it holds >= chunk_ms. 20 = one record
    # per 20 ms frame (the benchmark's baseline).
    chunk_ms: int = Field(default=100, ge=10, le=5000)
    # Publish a partial chunk when no frame arrived for this long, so acks (and credits) flow.
    max_linger_ms: int = Field(default=250, ge=10, le=10000)
    # Longest frame accepted.
    max_frame_ms: int = Field(default=200, ge=10, le=1000)
    # Frames a client may send before the first ack (each acked frame returns one credit).
    initial_credits: int = Field(default=50, ge=1, le=100000)
    # Chunks of one call handed to the Kafka producer and not yet acknowledged.
    max_inflight_chunks_per_call: int = Field(default=16, ge=1, le=10000)
    # Live calls per bridge; more get RESOURCE_EXHAUSTED.
    max_calls: int = Field(default=2000, ge=1)
    # Ended call ids remembered to refuse their reuse (ALREADY_EXISTS).
    recent_call_ids: int = Field(default=100000, ge=0)
    # On SIGTERM: how long live calls may go on before they are ended with reason "shutdown".
    drain_seconds: float = Field(default=20.0, ge=0)
    # After CallClosed: how long to wait for the client's half-close (a message instead = error).
    close_grace_ms: int = Field(default=2000, ge=0)
    # Comma-separated bearer tokens accepted in "authorization: Bearer <token>".
    bridge_tokens: SecretStr = SecretStr("")
    # Accept calls without a token (local experiments only).
    allow_unauthenticated: bool = False
    # Name published in CallStarted.bridge_instance (default: the host name, i.e. the pod name).
    instance_name: str = Field(default_factory=socket.gethostname)
    # Kafka producer batching delay (ms) and request timeout.
    kafka_linger_ms: int = Field(default=5, ge=0, le=1000)
    kafka_request_timeout_ms: int = Field(default=30000, ge=1000)
    # How often the health service re-checks Kafka metadata.
    health_probe_seconds: float = Field(default=5.0, gt=0)

    @model_validator(mode="after")
    def _check(self) -> "BridgeSettings":
        if not self.allow_unauthenticated and not self.tokens():
            raise ValueError(
                "LUPITA_BRIDGE_TOKENS is empty: set one or more comma-separated bearer tokens, "
                "or LUPITA_ALLOW_UNAUTHENTICATED=true for a local experiment"
            )
        needed = 2 * self.frames_per_chunk
        if self.initial_credits < needed:
            raise ValueError(
                f"LUPITA_INITIAL_CREDITS={self.initial_credits} is too small: both legs must be "
                f"able to fill one chunk of {self.chunk_ms} ms ({TYPICAL_FRAME_MS} ms frames) "
                f"before the first ack, so it must be >= {needed}"
            )
        return self

    @property
    def frames_per_chunk(self) -> int:
        return math.ceil(self.chunk_ms / TYPICAL_FRAME_MS)

    def tokens(self) -> tuple[str, ...]:
        raw = self.bridge_tokens.get_secret_value()
        return tuple(t.strip() for t in raw.split(",") if t.strip())
