"""Authentication of the webhook over real HTTP: bearer (Authorization with and without the prefix,
the legacy X-Vapi-Secret header) and VAPI's HMAC plan (sha256 hex, sha512 base64 with a prefix),
each good, bad, missing and stale; a refused request is 401 and writes nothing."""

from __future__ import annotations

import json
import time

import pytest
from ctxkit import ContextApi, person_of, query, random_phone, results, tool_call, tool_calls

from context_api.auth import sign

pytestmark = pytest.mark.stack

SECRET = "hmac-test-secret-0123456789"


def _save(phone: str) -> dict:
    return tool_calls(phone, tool_call("saveUserFact", {"type": "pet", "key": "cat_name", "value": "Michi"}))


def _facts(phone: str) -> int:
    return query("SELECT count(*) FROM user_facts WHERE phone_number_hash = %s", (person_of(phone),))[0][0]


def test_bearer_in_authorization_with_or_without_prefix(api):
    phone = random_phone()
    body = json.dumps(_save(phone)).encode()
    for value in (f"Bearer {api.token}", api.token, f"bearer {api.token}"):
        assert api.post(None, raw=body, auth=False, headers={"authorization": value}).status_code == 200
    for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": f"Bearer {api.token}x"},
                    {"authorization": "Basic " + api.token}, {"x-vapi-secret": api.token}):
        other = random_phone()
        r = api.post(_save(other), auth=False, headers=headers)
        assert r.status_code == 401 and r.json() == {"error": "unauthorized"}
        assert _facts(other) == 0
    assert api.metric("lupita_context_api_webhook_rejected_total", reason="auth_missing") >= 2
    assert api.metric("lupita_context_api_webhook_rejected_total", reason="auth_bad") >= 3


def test_legacy_x_vapi_secret_header(migrated):
    env = {"LUPITA_CONTEXT_API_BEARER_HEADER": "X-Vapi-Secret", "LUPITA_CONTEXT_API_BEARER_TOKENS": "old-one,new-one"}
    with ContextApi("context-api-xvapi", env, token="new-one") as server:
        phone = random_phone()
        assert server.post(_save(phone), auth=False, headers={"X-Vapi-Secret": "old-one"}).status_code == 200
        assert server.post(_save(phone), auth=False, headers={"x-vapi-secret": "new-one"}).status_code == 200
        other = random_phone()
        assert server.post(_save(other), auth=False, headers={"authorization": "Bearer new-one"}).status_code == 401
        assert server.post(_save(other), auth=False, headers={"X-Vapi-Secret": "older"}).status_code == 401
        assert _facts(other) == 0 and _facts(phone) == 1


@pytest.mark.parametrize("algorithm, encoding, prefix, millis", [
    ("sha256", "hex", "", False),
    ("sha512", "base64", "sha512=", True),
])
def test_hmac_plan_good_bad_stale(migrated, algorithm, encoding, prefix, millis):
    env = {
        "LUPITA_CONTEXT_API_AUTH_MODE": "hmac", "LUPITA_CONTEXT_API_HMAC_SECRET": SECRET,
        "LUPITA_CONTEXT_API_HMAC_ALGORITHM": algorithm, "LUPITA_CONTEXT_API_HMAC_ENCODING": encoding,
        "LUPITA_CONTEXT_API_HMAC_PREFIX": prefix, "LUPITA_CONTEXT_API_HMAC_SIGNATURE_HEADER": "X-Vapi-Signature",
        "LUPITA_CONTEXT_API_HMAC_TIMESTAMP_HEADER": "X-Vapi-Timestamp", "LUPITA_CONTEXT_API_HMAC_MAX_AGE_SECONDS": "60",
    }
    with ContextApi(f"context-api-hmac-{algorithm}", env) as server:
        def send(phone: str, *, stamp: float | None = None, secret: str = SECRET, tamper: bool = False,
                 drop: str | None = None):
            body = json.dumps(_save(phone), separators=(",", ":")).encode()
            t = time.time() if stamp is None else stamp
            ts = str(int(t * 1000)) if millis else str(int(t))
            headers = {"X-Vapi-Signature": sign(secret, algorithm, ts, body, encoding, prefix), "X-Vapi-Timestamp": ts}
            if drop:
                del headers[drop]
            return server.post(None, raw=body + (b" " if tamper else b""), auth=False, headers=headers)

        good = random_phone()
        r = send(good)
        assert r.status_code == 200 and "result" in results(r)[0]
        assert _facts(good) == 1
        bad = random_phone()
        assert send(bad, secret=SECRET + "x").status_code == 401
        assert send(bad, tamper=True).status_code == 401
        assert send(bad, stamp=time.time() - 120).status_code == 401          # stale (window 60 s)
        assert send(bad, stamp=time.time() + 120).status_code == 401          # from the future
        assert send(bad, drop="X-Vapi-Signature").status_code == 401
        assert send(bad, drop="X-Vapi-Timestamp").status_code == 401
        # the bearer token is not accepted in hmac mode
        assert server.post(_save(bad)).status_code == 401
        assert _facts(bad) == 0
        assert server.metric("lupita_context_api_webhook_rejected_total", reason="auth_stale") == 2
        assert server.metric("lupita_context_api_webhook_rejected_total", reason="auth_missing") == 3  # two dropped headers, the bearer request
