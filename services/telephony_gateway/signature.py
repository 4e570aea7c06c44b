"""X-Twilio-Signature on the websocket upgrade, checked with Twilio's own SDK.

Twilio signs every request it makes with HMAC-SHA1 under the account's auth token, the websocket
upgrade of a Media Stream included. The signed URL is the ``wss://`` URL of the ``<Stream>`` as
Twilio dialled it; query parameters count as parameters of the request, not as part of the URL
(how Twilio's own agent-connect library validates websocket upgrades). Behind a load balancer the
Host the gateway sees may not be the one Twilio dialled, so the origin comes from
``LUPITA_GATEWAY_PUBLIC_URL`` when it is set. ``twilio.request_validator.RequestValidator`` does the
HMAC and the constant-time comparison (and tries the URL with and without a default port).
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlsplit

from twilio.request_validator import RequestValidator

HEADER = "X-Twilio-Signature"


def signed_url(public_url: str, host: str, path: str) -> tuple[str, dict[str, str]]:
    """(URL Twilio signed, its query parameters) for a request of ``path`` (may hold a query)."""
    parts = urlsplit(path)
    origin = public_url.rstrip("/") if public_url else f"wss://{host}"
    return f"{origin}{parts.path}", dict(parse_qsl(parts.query, keep_blank_values=True))


def valid(auth_token: str, signature: str | None, url: str, params: dict[str, str]) -> bool:
    if not signature or not auth_token:
        return False
    return bool(RequestValidator(auth_token).validate(url, params, signature))


def sign(auth_token: str, url: str, params: dict[str, str] | None = None) -> str:
    """The signature Twilio would send (for the simulator and the tests)."""
    return RequestValidator(auth_token).compute_signature(url, params or {})
