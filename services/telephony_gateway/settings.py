"""Settings of the telephony gateway (env prefix ``LUPITA_``, frozen).

Gateway-specific names are ``LUPITA_GATEWAY_*``; the bridge it streams into is named by the same
variables the call simulator uses (``LUPITA_BRIDGE_TARGET``, ``LUPITA_BRIDGE_TOKENS``), so one
deployment's bridge settings serve both.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, model_validator

from lupita.config import CommonSettings


class GatewaySettings(CommonSettings):
    """Everything the gateway reads from its environment."""

    # Websocket/HTTP listen address of the gateway (Twilio connects here; /livez and /readyz
    # answer on the same port). Port 0 = pick a free port (tests).
    gateway_host: str = "0.0.0.0"
    gateway_port: int = Field(default=8765, ge=0, le=65535)
    # Prometheus /metrics port (0 = disabled) and its address.
    gateway_metrics_port: int = Field(default=9104, ge=0, le=65535)
    gateway_metrics_host: str = "0.0.0.0"

    # The media bridge (gRPC host:port) and its bearer tokens (the first one is used).
    bridge_target: str = "127.0.0.1:50061"
    bridge_tokens: SecretStr = SecretStr("")

    # --- Twilio Media Streams ---------------------------------------------------------------
    # Path of the <Stream url="wss://.../twilio"> endpoint.
    gateway_twilio_path: str = "/twilio"
    # The account's auth token: verifies X-Twilio-Signature on the websocket upgrade.
    gateway_twilio_auth_token: SecretStr = SecretStr("")
    # Origin Twilio connects to, as written in the TwiML (e.g. "wss://gw.example.org"): the
    # signature covers this URL, and behind a load balancer the Host header may differ. Empty =
    # "wss://" + the request's Host header.
    gateway_public_url: str = ""
    # Accept unsigned upgrades (local experiments only; refused at start-up otherwise when no
    # auth token is set).
    gateway_allow_unsigned: bool = False
    # What goes to the bridge: "pcm16" (mu-law decoded here, what the issue asks for and what every
    # stage reads natively) or "mulaw" (Twilio's bytes unchanged: half the Kafka bytes).
    gateway_forward_codec: Literal["pcm16", "mulaw"] = "pcm16"

    # --- VAPI live audio (call.monitor.listenUrl) --------------------------------------------
    # The control API (POST /vapi/calls starts listening to a call): its port (0 = off) and the
    # bearer tokens it accepts (comma separated; the context-api's webhook holds one).
    gateway_control_port: int = Field(default=8766, ge=0, le=65535)
    gateway_control_tokens: SecretStr = SecretStr("")
    # VAPI's public API key, sent as "Authorization: Bearer" to listen URLs
    # (monitorPlan.listenAuthenticationEnabled); empty = listen URLs without authentication.
    gateway_vapi_listen_token: SecretStr = SecretStr("")
    # After this many seconds of a listen socket, audio arriving faster than 1.5x real time means
    # the rate is higher than announced: the call is refused (reason "media_format"). 0 = off.
    gateway_vapi_rate_check_seconds: float = Field(default=3.0, ge=0)

    # --- Amazon Chime SDK Voice Connector -> Kinesis Video Streams -------------------------
    # Streaming events arrive on POST /chime/events of the control API (an EventBridge API
    # destination with the same bearer tokens). Endpoint of the KVS control plane for
    # GetDataEndpoint (empty = AWS's own for the region); a non-empty GET_MEDIA endpoint skips
    # GetDataEndpoint (tests point both at a local stand-in).
    gateway_chime_region: str = "us-east-1"
    gateway_chime_kvs_endpoint: str = ""
    gateway_chime_get_media_endpoint: str = ""
    # Recording consent for Voice Connector calls (Chime's events carry none): true when the
    # trunk's calls were consented upstream (e.g. an IVR prompt), with its source label.
    gateway_chime_recording_consent: bool = False
    gateway_chime_consent_source: str = ""
    gateway_chime_language: str = "es-MX"
    gateway_chime_region_label: str = ""
    # How long a leg's STARTED waits for the other leg's (then the call runs with one leg).
    gateway_chime_pair_seconds: float = Field(default=10.0, gt=0)
    # A KVS stream with no bytes for this long: the leg is "stalled". After ENDED, a leg whose
    # stream stays open without bytes for the grace period is over (the tail has arrived).
    gateway_chime_idle_seconds: float = Field(default=10.0, gt=0)
    gateway_chime_end_grace_seconds: float = Field(default=2.0, gt=0)
    # A call's first GetMedia starts at the leg's startTime (else the event's time) minus this
    # margin, by server timestamp (KVS serves the fragment *containing* that time), and skips
    # fragments numbered before the event's startFragmentNumber: the margin covers clock skew
    # between the event and KVS's ingestion clock; a larger one only reads more to skip.
    gateway_chime_start_margin_seconds: float = Field(default=10.0, ge=0)
    # Chime events go through Kafka so that any number of gateway pods share the calls: the
    # control API publishes each event to <prefix>telephony.chime.events (keyed by transaction
    # id) and answers 202 only after the broker's ack (503 when Kafka does not ack within
    # PUBLISH_TIMEOUT_SECONDS: EventBridge retries); the pods consume it as one consumer group
    # (GROUP_ID) and the owner of a call's partition runs the call. Checkpoints go to the
    # compacted <prefix>telephony.chime.checkpoints. SESSION_TIMEOUT_MS: how long a pod that
    # died silently keeps its partitions (then another pod resumes its calls). HANDOFF_SECONDS:
    # how long a hand-off waits for a call's legs to stop between two frames. ENABLED=false: no
    # Chime path (no consumer; POST /chime/events answers 404).
    gateway_chime_enabled: bool = True
    gateway_chime_group_id: str = "lupita-telephony-gateway"
    gateway_chime_publish_timeout_seconds: float = Field(default=3.0, gt=0, le=4.5)
    gateway_chime_session_timeout_ms: int = Field(default=10_000, ge=6_000, le=300_000)
    gateway_chime_handoff_seconds: float = Field(default=5.0, gt=0)

    # --- behaviour shared by every source ---------------------------------------------------
    # Audio per frame sent to the bridge: contiguous 20 ms source frames are joined up to this
    # (a multiple of 20). 100 = the bridge's chunk_ms: 5x fewer gRPC messages, and the newest audio
    # reaches Kafka no later (telephony_gateway.joiner). 20 = one bridge frame per source frame.
    gateway_bridge_frame_ms: int = Field(default=100, ge=20, le=200, multiple_of=20)
    # Largest websocket message accepted (bytes); a larger one closes that call's socket (1009).
    gateway_max_message_bytes: int = Field(default=64 * 1024, ge=1024, le=16 * 1024 * 1024)
    # Longest media payload forwarded (the bridge refuses frames over its max_frame_ms, 200 ms).
    gateway_max_frame_ms: int = Field(default=200, ge=10, le=1000)
    # Messages held to put out-of-order sequence numbers back in order; a hole older than this
    # many messages is given up (the frames it held are a gap).
    gateway_reorder_window: int = Field(default=32, ge=1, le=10000)
    # A socket with no message for this long is ended (reason "stalled").
    gateway_idle_timeout_seconds: float = Field(default=10.0, gt=0)
    # From the websocket upgrade to the start message.
    gateway_start_timeout_seconds: float = Field(default=10.0, gt=0)
    # Consecutive frames per track whose payload length is checked against their timestamps
    # (a stream whose bytes do not match the announced rate is refused: reason "media_format").
    gateway_format_check_frames: int = Field(default=10, ge=2, le=1000)
    # Live calls per gateway; more are refused (HTTP 503 at the upgrade).
    gateway_max_calls: int = Field(default=1000, ge=1)
    # On SIGTERM: how long live calls may go on before they are ended with reason "shutdown".
    gateway_drain_seconds: float = Field(default=20.0, ge=0)
    # After the last frame: how long to wait for the bridge's final acks and CallClosed.
    gateway_bridge_close_seconds: float = Field(default=30.0, gt=0)

    @model_validator(mode="after")
    def _check(self) -> "GatewaySettings":
        if not self.gateway_allow_unsigned and not self.gateway_twilio_auth_token.get_secret_value():
            raise ValueError(
                "LUPITA_GATEWAY_TWILIO_AUTH_TOKEN is empty: set the Twilio account's auth token (it "
                "verifies X-Twilio-Signature), or LUPITA_GATEWAY_ALLOW_UNSIGNED=true for a local experiment"
            )
        if not self.gateway_twilio_path.startswith("/"):
            raise ValueError("LUPITA_GATEWAY_TWILIO_PATH must start with '/'")
        if self.gateway_public_url and not self.gateway_public_url.startswith(("ws://", "wss://")):
            raise ValueError("LUPITA_GATEWAY_PUBLIC_URL must start with ws:// or wss://")
        return self

    def control_tokens(self) -> tuple[str, ...]:
        return tuple(t.strip() for t in self.gateway_control_tokens.get_secret_value().split(",") if t.strip())

    @property
    def bridge_token(self) -> str:
        tokens = [t.strip() for t in self.bridge_tokens.get_secret_value().split(",")]
        return next((t for t in tokens if t), "")
