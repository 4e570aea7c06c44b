"""The context API as the tests run it: ``lupita context-api`` as a child process (logging into the
session's log folder through the kit, so its output is scanned for phone numbers), a VAPI-like
client, made-up callers, and VAPI message builders."""

from __future__ import annotations

import json
import os
import random
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import logscan
from procs import ROOT, free_port, metric_value, scrape

_LISTENING = "context api listening"
ASSISTANT_ID = "asst-test-lupita"


def random_phone(country: str = "MX") -> str:
    """A valid made-up number (E.164), different every call."""
    import phonenumbers

    while True:
        if country == "MX":
            number = "+5255" + "".join(random.choice("0123456789") for _ in range(8))
        else:
            number = "+1202" + random.choice("23456789") + "".join(random.choice("0123456789") for _ in range(6))
        if phonenumbers.is_valid_number(phonenumbers.parse(number)):
            return number


def person_of(phone: str) -> str:
    """The keyed hash the service keeps for ``phone`` (as the stack's key makes it)."""
    from context_api.phones import person_hash
    from lupita.config import CommonSettings

    return person_hash(phone, CommonSettings().hmac_key_bytes)


class ContextApi:
    """One ``lupita context-api`` child on a free port with the given settings."""

    def __init__(self, name: str = "context-api", env: dict[str, str] | None = None, *,
                 token: str | None = None) -> None:
        self.token = token or secrets.token_urlsafe(24)
        self.metrics_port = free_port()
        self.env = dict(os.environ)
        self.env.update({
            "LUPITA_CONTEXT_API_ASSISTANT_ID": ASSISTANT_ID,
            "LUPITA_CONTEXT_API_BEARER_TOKENS": self.token,
            "LUPITA_LOG_LEVEL": "INFO",
        })
        self.env.update(env or {})
        self.log_path = logscan.log_path(name)
        self.proc: subprocess.Popen | None = None
        self.port: int | None = None
        self.client: httpx.Client | None = None

    def start(self, timeout: float = 60.0) -> "ContextApi":
        args = [sys.executable, "-m", "lupita.cli", "context-api", "--host", "127.0.0.1", "--port", "0",
                "--metrics-port", str(self.metrics_port)]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(args, env=self.env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for rec in self.logs():
                if rec.get("msg") == _LISTENING:
                    self.port = int(rec["port"])
                    self.client = httpx.Client(base_url=self.url, timeout=10)
                    return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"context-api exited with {self.proc.returncode}:\n{self.log_tail()}")
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"context-api did not listen within {timeout:.0f}s:\n{self.log_tail()}")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def logs(self) -> list[dict]:
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    def metric(self, name: str, **labels: str) -> float:
        return metric_value(scrape(self.metrics_port), name, **labels)

    def post(self, payload: Any, *, headers: dict[str, str] | None = None, auth: bool = True,
             raw: bytes | None = None) -> httpx.Response:
        """POST /vapi/webhook: ``payload`` as JSON (or ``raw`` bytes), with the bearer token."""
        body = raw if raw is not None else json.dumps(payload).encode()
        h = {"content-type": "application/json"}
        if auth:
            h["authorization"] = f"Bearer {self.token}"
        h.update(headers or {})
        assert self.client is not None
        return self.client.post("/vapi/webhook", content=body, headers=h)

    def stop(self, timeout: float = 30.0) -> int | None:
        if self.client is not None:
            self.client.close()
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode

    def __enter__(self) -> "ContextApi":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --- VAPI messages ---------------------------------------------------------------------------------


def call_obj(phone: str | None, vapi_call_id: str | None = None, *, where: str = "call", **extra: Any) -> dict:
    call: dict[str, Any] = {"id": vapi_call_id or f"vapi-{secrets.token_hex(8)}", **extra}
    if phone is not None and where == "call":
        call["customer"] = {"number": phone}
    return call


def message(kind: str, phone: str | None, *, vapi_call_id: str | None = None, where: str = "call",
            call_extra: dict | None = None, **fields: Any) -> dict:
    msg: dict[str, Any] = {"type": kind, "timestamp": int(time.time() * 1000),
                           "call": call_obj(phone, vapi_call_id, where=where, **(call_extra or {})), **fields}
    if phone is not None and where == "message":
        msg["customer"] = {"number": phone}
    return {"message": msg}


def tool_call(name: str, args: Any, *, shape: str = "function-string", call_id: str | None = None) -> dict:
    """One entry of ``toolCallList`` in one of VAPI's three shapes."""
    call_id = call_id or f"call_{secrets.token_hex(6)}"
    if shape == "function-string":
        return {"id": call_id, "type": "function", "function": {"name": name, "arguments": json.dumps(args)}}
    if shape == "function-object":
        return {"id": call_id, "type": "function", "function": {"name": name, "arguments": args}}
    if shape == "flat-parameters":
        return {"id": call_id, "name": name, "parameters": args}
    if shape == "flat-arguments":
        return {"id": call_id, "name": name, "arguments": args}
    raise ValueError(shape)


def tool_calls(phone: str | None, *calls: dict, vapi_call_id: str | None = None, **kw: Any) -> dict:
    return message("tool-calls", phone, vapi_call_id=vapi_call_id, toolCallList=list(calls), **kw)


def results(response: httpx.Response) -> list[dict]:
    assert response.status_code == 200, response.text
    out = response.json()["results"]
    for r in out:
        for k in ("result", "error"):
            if k in r:
                assert isinstance(r[k], str) and "\n" not in r[k]
    return out


def dsn() -> str:
    from lupita.config import CommonSettings

    return CommonSettings().postgres_dsn.get_secret_value()


def query(sql: str, params: tuple = ()) -> list[tuple]:
    import psycopg

    with psycopg.connect(dsn()) as conn:
        return conn.execute(sql, params).fetchall()


@contextmanager
def weaviate_collections(conv: str, utt: str, dim: int) -> Iterator[Any]:
    """The stream processor's own Weaviate sink on two collections of the caller's (created with
    ``dim``-d vectors), deleted afterwards: the objects the context API reads, written as the
    platform writes them."""
    import weaviate
    from lupita.config import CommonSettings
    from stream_processor.stores.weaviate import WeaviateSink

    s = CommonSettings()
    sink = WeaviateSink(host=s.weaviate_host, http_port=s.weaviate_http_port, grpc_port=s.weaviate_grpc_port,
                        conversation_collection=conv, utterance_collection=utt)
    try:
        sink.ensure_collections(dim)
        yield sink
    finally:
        with weaviate.connect_to_custom(http_host=s.weaviate_host, http_port=s.weaviate_http_port, http_secure=False,
                                        grpc_host=s.weaviate_host, grpc_port=s.weaviate_grpc_port,
                                        grpc_secure=False) as client:
            client.collections.delete([conv, utt])
        sink.close()
