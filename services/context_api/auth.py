"""Authentication of VAPI's requests, constant-time; any failure is a 401 and nothing is done.

- ``bearer``: the configured header (``Authorization`` by default; ``X-Vapi-Secret`` for VAPI's
  legacy secret) holds one of the configured credentials, with or without a ``Bearer `` prefix.
- ``hmac``: VAPI's HMAC plan. The signature header holds ``prefix + encode(HMAC(secret,
  "{timestamp}.{raw body}"))`` with sha256 or sha512, hex or base64, where ``timestamp`` is the
  timestamp header exactly as sent (Unix seconds or milliseconds); a timestamp further than the
  replay window from now is refused.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Mapping

from context_api.settings import ContextApiSettings


class AuthError(Exception):
    """Refused; ``reason`` is a metric label (auth_missing, auth_bad, auth_stale)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def check(settings: ContextApiSettings, headers: Mapping[str, str], body: bytes, *, now: float | None = None) -> None:
    """Raise :class:`AuthError` unless the request is authentic (``headers`` looked up by lower-case name)."""
    if settings.context_api_auth_mode == "bearer":
        _bearer(settings, headers)
    else:
        _hmac(settings, headers, body, time.time() if now is None else now)


def _bearer(settings: ContextApiSettings, headers: Mapping[str, str]) -> None:
    check_token(headers, settings.context_api_bearer_header, settings.bearer_tokens())


def check_token(headers: Mapping[str, str], header: str, tokens: tuple[str, ...]) -> None:
    """``header`` holds one of ``tokens`` (with or without ``Bearer ``), compared in constant time;
    no tokens configured: everything is refused. Also the JSON API's check."""
    value = headers.get(header.lower())
    if not value:
        raise AuthError("auth_missing", "missing credential")
    value = value.strip()
    if value[:7].lower() == "bearer ":
        value = value[7:].strip()
    given = value.encode()
    ok = False
    for token in tokens:  # every token compared: no early exit
        ok |= hmac.compare_digest(given, token.encode())
    if not ok:
        raise AuthError("auth_bad", "invalid credential")


def sign(secret: str, algorithm: str, timestamp: str, body: bytes, encoding: str = "hex", prefix: str = "") -> str:
    """The signature header value VAPI sends (also used by the tests and the demo)."""
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, getattr(hashlib, algorithm)).digest()
    text = digest.hex() if encoding == "hex" else base64.b64encode(digest).decode()
    return prefix + text


def _hmac(settings: ContextApiSettings, headers: Mapping[str, str], body: bytes, now: float) -> None:
    signature = headers.get(settings.context_api_hmac_signature_header.lower())
    stamp = headers.get(settings.context_api_hmac_timestamp_header.lower())
    if not signature or not stamp:
        raise AuthError("auth_missing", "missing signature or timestamp")
    stamp = stamp.strip()
    if not stamp.isdigit() or len(stamp) > 16:
        raise AuthError("auth_bad", "invalid timestamp")
    seconds = int(stamp) / (1000.0 if len(stamp) >= 12 else 1.0)  # milliseconds since 2001 have 12+ digits
    signature = signature.strip()
    prefix = settings.context_api_hmac_prefix
    if prefix:
        if not signature.startswith(prefix):
            raise AuthError("auth_bad", "invalid signature")
        signature = signature[len(prefix):]
    try:
        if settings.context_api_hmac_encoding == "hex":
            given = bytes.fromhex(signature)
        else:
            given = base64.b64decode(signature, validate=True)
    except (ValueError, binascii.Error):
        raise AuthError("auth_bad", "invalid signature") from None
    secret = settings.context_api_hmac_secret.get_secret_value().encode()
    expected = hmac.new(secret, stamp.encode() + b"." + body,
                        getattr(hashlib, settings.context_api_hmac_algorithm)).digest()
    if not hmac.compare_digest(given, expected):
        raise AuthError("auth_bad", "invalid signature")
    # checked after the signature, so a forged request learns nothing about the clock
    if abs(now - seconds) > settings.context_api_hmac_max_age_seconds:
        raise AuthError("auth_stale", "stale timestamp")
