"""Settings shared by every service (pydantic-settings, env prefix ``LUPITA_``).

Each service defines one frozen settings class deriving from :class:`CommonSettings`;
no other module reads ``os.environ``. Secrets (HMAC and encryption keys, S3
credentials, bearer tokens) come only from the environment.
"""

from __future__ import annotations

import base64
from functools import cached_property

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class CommonSettings(BaseSettings):
    """Infrastructure endpoints and keys every service needs."""

    model_config = SettingsConfigDict(
        env_prefix="LUPITA_", frozen=True, extra="ignore", hide_input_in_errors=True
    )

    # Deployment environment name (goes into logs and the Kafka topic prefix default).
    environment: str = "local"
    log_level: str = "INFO"

    # Kafka bootstrap servers, comma separated.
    kafka_bootstrap: str = "127.0.0.1:19092"
    # Prefix put before every topic name, e.g. "prod." (empty = none).
    topic_prefix: str = ""
    # Partitions for the topics we create (all topics keyed by call_id share it).
    topic_partitions: int = Field(default=4, ge=1)
    topic_replication: int = Field(default=1, ge=1)

    # S3 (MinIO locally). Empty endpoint = AWS default resolution.
    s3_endpoint: str = "http://127.0.0.1:19000"
    s3_region: str = "us-east-1"
    s3_access_key: SecretStr = SecretStr("")
    s3_secret_key: SecretStr = SecretStr("")
    s3_legal_bucket: str = "saludcompartida-legal-archive"
    s3_active_bucket: str = "saludcompartida-companion-active"

    # Postgres connection string (libpq URI).
    postgres_dsn: SecretStr = SecretStr("postgresql://lupita@127.0.0.1:15432/lupita")

    # Weaviate (HTTP and gRPC ports; the v4 client needs both).
    weaviate_host: str = "127.0.0.1"
    weaviate_http_port: int = 18080
    weaviate_grpc_port: int = 15051

    # Key for the keyed phone-number hash (HMAC-SHA256), base64, >= 32 bytes.
    phone_hmac_key: SecretStr = SecretStr("")
    # Key that encrypts phone numbers at rest (AES-256-GCM), base64 of 32 bytes.
    phone_encryption_key: SecretStr = SecretStr("")

    @field_validator("kafka_bootstrap")
    @classmethod
    def _bootstrap_not_empty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("LUPITA_KAFKA_BOOTSTRAP must name at least one broker")
        return v

    @cached_property
    def hmac_key_bytes(self) -> bytes:
        return _decode_key("LUPITA_PHONE_HMAC_KEY", self.phone_hmac_key, min_len=32)

    @cached_property
    def encryption_key_bytes(self) -> bytes:
        key = _decode_key("LUPITA_PHONE_ENCRYPTION_KEY", self.phone_encryption_key, min_len=32)
        if len(key) != 32:
            raise ValueError("LUPITA_PHONE_ENCRYPTION_KEY must be base64 of exactly 32 bytes")
        return key

    def topic(self, name: str) -> str:
        """Full topic name for a logical topic (``audio.chunks`` -> ``<prefix>audio.chunks``)."""
        return f"{self.topic_prefix}{name}"


def _decode_key(env_name: str, value: SecretStr, *, min_len: int) -> bytes:
    raw = value.get_secret_value()
    if not raw:
        raise ValueError(f"{env_name} is not set (base64 of >= {min_len} random bytes)")
    try:
        key = base64.b64decode(raw, validate=True)
    except ValueError as exc:
        raise ValueError(f"{env_name} is not valid base64") from exc
    if len(key) < min_len:
        raise ValueError(f"{env_name} must decode to at least {min_len} bytes, got {len(key)}")
    return key
