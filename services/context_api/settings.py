"""Settings of the context API (env prefix ``LUPITA_``, service names ``LUPITA_CONTEXT_API_*``, frozen).

Secrets (bearer tokens, the HMAC secret, the phone keys, the Postgres DSN) come only from the
environment and are never logged or echoed in an error.
"""

from __future__ import annotations

from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, SecretStr, field_validator, model_validator

from lupita.config import CommonSettings


class ContextApiSettings(CommonSettings):
    """Everything the context API reads from its environment (``LUPITA_<FIELD>``)."""

    # HTTP listen address and port (0 = any free port, tests), Prometheus /metrics port (0 = off).
    context_api_host: str = "0.0.0.0"
    context_api_port: int = Field(default=8090, ge=0, le=65535)
    context_api_metrics_port: int = Field(default=9103, ge=0, le=65535)
    # Worker processes sharing the HTTP port (one event loop each; one saturates one core). 1 = a
    # single process (dev, tests, demo); in production about one per core the pod may use, or more
    # replicas. Each has its own Postgres pool (DB_POOL_SIZE connections) and past-conversations
    # cache; only worker 0 runs the callbacks dispatcher and the erasure sweeper; the parent
    # process serves /metrics summed over the workers (Prometheus multiprocess mode).
    context_api_workers: int = Field(default=1, ge=1, le=64)

    # The VAPI assistant answered to every assistant-request.
    context_api_assistant_id: str = Field(default="", max_length=200)

    # How VAPI authenticates to us: "bearer" (a credential in a header, with or without the
    # "Bearer " prefix; the legacy X-Vapi-Secret is header name "X-Vapi-Secret") or "hmac"
    # (VAPI's HMAC plan: signature + timestamp headers over "{timestamp}.{raw body}").
    context_api_auth_mode: Literal["bearer", "hmac"] = "bearer"
    context_api_bearer_header: str = Field(default="Authorization", min_length=1, max_length=100)
    # comma-separated accepted credentials (more than one while rotating)
    context_api_bearer_tokens: SecretStr = SecretStr("")
    context_api_hmac_secret: SecretStr = SecretStr("")
    context_api_hmac_algorithm: Literal["sha256", "sha512"] = "sha256"
    context_api_hmac_signature_header: str = Field(default="x-signature", min_length=1, max_length=100)
    context_api_hmac_timestamp_header: str = Field(default="x-timestamp", min_length=1, max_length=100)
    context_api_hmac_encoding: Literal["hex", "base64"] = "hex"
    # e.g. "sha256=" (GitHub style); empty = none
    context_api_hmac_prefix: str = Field(default="", max_length=40)
    # a signature whose timestamp is further than this from now (either way) is refused
    context_api_hmac_max_age_seconds: float = Field(default=300.0, gt=0, le=86400)

    # The JSON API (/v1): accepted bearer credentials (comma-separated, header Authorization).
    # Empty: the webhook's bearer tokens (auth mode bearer); in hmac mode with none set, /v1 refuses all.
    context_api_api_tokens: SecretStr = SecretStr("")

    # Erasure (POST /v1/erasure): the Weaviate collections the stream processor writes (the same
    # names as its LUPITA_WEAVIATE_*_COLLECTION), and how long an erasure may take.
    weaviate_conversation_collection: str = Field(default="LupitaConversation", pattern=r"^[A-Z][A-Za-z0-9_]{0,99}$")
    weaviate_utterance_collection: str = Field(default="LupitaUtterance", pattern=r"^[A-Z][A-Za-z0-9_]{0,99}$")
    context_api_erasure_timeout_seconds: float = Field(default=60.0, gt=0, le=600)
    # How often the retained objects whose legal retention has ended are deleted (0 = never here).
    context_api_erasure_sweep_interval_seconds: float = Field(default=3600.0, ge=0, le=86400)

    # Largest request body (bytes); more = 413.
    context_api_max_body_bytes: int = Field(default=2 * 1024 * 1024, ge=1024)
    # assistant-request: answer within this, with a minimal context if the store is slower.
    context_api_assistant_request_budget_ms: int = Field(default=300, ge=1, le=7000)
    # One tool call (its store work) may take this long before it answers with an error.
    context_api_tool_timeout_ms: int = Field(default=3000, ge=10, le=20000)
    context_api_max_tool_calls: int = Field(default=16, ge=1, le=128)
    # The Spanish brief given to the agent, in characters.
    context_api_brief_max_chars: int = Field(default=1200, ge=200, le=20000)
    context_api_max_facts: int = Field(default=30, ge=1, le=500)
    context_api_recent_calls: int = Field(default=3, ge=0, le=50)
    context_api_alert_days: int = Field(default=14, ge=0, le=365)

    # Where the context is read from: "profile" (person_profiles, indexed reads) or "fanout"
    # (the same computed from the base tables per request, past conversations from Weaviate: the
    # benchmark's baseline).
    context_api_context_source: Literal["profile", "fanout"] = "profile"
    # Past conversations: "stored" reads those the stream processor kept at the person's last
    # analysis (person_past_conversations) and asks Weaviate only when they are not about the
    # person's latest analysed call (older data, a missed write); "weaviate" asks it every time.
    context_api_past_source: Literal["stored", "weaviate"] = "stored"

    # Relevant past conversations (Weaviate, the caller's own only): how many (0 = off), the half-life
    # of the recency weight, the time the context may wait for them (tool calls and /v1; an
    # assistant-request gives them what is left of its own budget, at most this), and the HTTP timeout.
    context_api_past_conversations: int = Field(default=3, ge=0, le=10)
    context_api_past_half_life_days: float = Field(default=60.0, gt=0, le=3650)
    context_api_past_budget_ms: int = Field(default=150, ge=1, le=5000)
    context_api_weaviate_timeout_ms: int = Field(default=2000, ge=10, le=30000)
    # Answers kept per (person, latest call, calls left out) for this long (0 = no cache), at most this many.
    context_api_past_cache_seconds: float = Field(default=300.0, ge=0, le=86400)
    context_api_past_cache_size: int = Field(default=10000, ge=1, le=1_000_000)

    # The telephony gateway's control API (services/telephony_gateway/control.py): on a VAPI
    # status-update "in-progress" the webhook asks it (POST /vapi/calls) to listen to the call, in
    # the background. Off when the URL is empty. Its bearer token, and how long one request may take.
    context_api_gateway_url: str = Field(default="", max_length=300, pattern=r"^(https?://[^\s/?#]+)?$")
    context_api_gateway_token: SecretStr = SecretStr("")
    context_api_gateway_timeout_ms: int = Field(default=3000, ge=10, le=30000)

    # The person's time zone (callbacks, "hace 3 días") and phone regions.
    context_api_timezone: str = "America/Mexico_City"
    context_api_default_region: str = Field(default="MX", pattern=r"^[A-Z]{2}$")
    context_api_phone_regions: str = "MX,US"
    # scheduleCallback: earliest and latest acceptable time, and the window within which a second
    # request for the same person is the same callback.
    context_api_callback_min_lead_minutes: int = Field(default=5, ge=0, le=1440)
    context_api_callback_max_days: int = Field(default=60, ge=1, le=366)
    context_api_callback_window_minutes: int = Field(default=30, ge=1, le=1440)

    # The callbacks dispatcher (callbacks_due.py): publishes each due pending callback to the
    # `callbacks.due` topic exactly once (Kafka transactions). Off in a replica that should not
    # dispatch (any number may run: the one holding a Postgres advisory lock dispatches, the others
    # stand by). Poll period when idle (also a standby's retry of the lock), rows per transaction,
    # how long one Kafka step (connect, acks, commit, reconcile) may wait, and the longest back-off
    # after a Kafka/Postgres failure.
    context_api_callbacks_enabled: bool = True
    context_api_callbacks_poll_interval_seconds: float = Field(default=1.0, gt=0, le=3600)
    context_api_callbacks_batch_size: int = Field(default=50, ge=1, le=1000)
    context_api_callbacks_publish_timeout_seconds: float = Field(default=10.0, gt=0, le=300)
    context_api_callbacks_backoff_max_seconds: float = Field(default=30.0, gt=0, le=3600)
    # The Kafka transactional id every replica's dispatcher shares (a new lock holder fences the
    # previous one with it); empty: `lupita-context-api-callbacks.<prefixed topic>`. Give two
    # deployments that share a Kafka cluster and topic name different ids.
    context_api_callbacks_transactional_id: str = Field(default="", max_length=200, pattern=r"^[A-Za-z0-9._-]*$")

    # Postgres: connections kept, connect and statement timeout.
    context_api_db_pool_size: int = Field(default=8, ge=1, le=200)
    context_api_db_timeout_ms: int = Field(default=2000, ge=50, le=60000)
    # /readyz gives up on Postgres after this long.
    context_api_readyz_timeout_ms: int = Field(default=1000, ge=10, le=30000)
    # SIGTERM: in-flight requests may finish within this.
    context_api_drain_seconds: float = Field(default=10.0, ge=0, le=300)

    @field_validator("context_api_timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError("LUPITA_CONTEXT_API_TIMEZONE is not an IANA time zone") from None
        return v

    @model_validator(mode="after")
    def _check(self) -> "ContextApiSettings":
        if not self.context_api_assistant_id.strip():
            raise ValueError("LUPITA_CONTEXT_API_ASSISTANT_ID is empty: the VAPI assistant to answer with")
        if self.context_api_auth_mode == "bearer" and not self.bearer_tokens():
            raise ValueError("LUPITA_CONTEXT_API_BEARER_TOKENS is empty (auth mode bearer)")
        if self.context_api_gateway_url and not self.context_api_gateway_token.get_secret_value():
            raise ValueError("LUPITA_CONTEXT_API_GATEWAY_TOKEN is empty (LUPITA_CONTEXT_API_GATEWAY_URL is set)")
        if self.context_api_auth_mode == "hmac" and len(self.context_api_hmac_secret.get_secret_value()) < 16:
            raise ValueError("LUPITA_CONTEXT_API_HMAC_SECRET must have at least 16 characters (auth mode hmac)")
        return self

    def bearer_tokens(self) -> tuple[str, ...]:
        raw = self.context_api_bearer_tokens.get_secret_value()
        return tuple(t.strip() for t in raw.split(",") if t.strip())

    def api_tokens(self) -> tuple[str, ...]:
        raw = self.context_api_api_tokens.get_secret_value()
        own = tuple(t.strip() for t in raw.split(",") if t.strip())
        if own:
            return own
        return self.bearer_tokens() if self.context_api_auth_mode == "bearer" else ()

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.context_api_timezone)

    @property
    def phone_regions(self) -> tuple[str, ...]:
        return tuple(r.strip().upper() for r in self.context_api_phone_regions.split(",") if r.strip())
