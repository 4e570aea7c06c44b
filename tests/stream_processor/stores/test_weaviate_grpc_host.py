"""``LUPITA_WEAVIATE_GRPC_HOST``: the Weaviate sink opens its gRPC channel on that host (the Weaviate
Helm chart serves gRPC through its own Service, "weaviate-grpc", apart from the HTTP one) and its
HTTP calls on ``LUPITA_WEAVIATE_HOST``; empty, gRPC goes to ``LUPITA_WEAVIATE_HOST`` too.

Against the live Weaviate of the dev stack: a TCP relay on another loopback address (127.0.0.9,
a port of its own) forwards to the stack's gRPC port and counts what passes. With the setting
pointing there, the sink's writes and its near-vector query go through the relay, while nothing
listens on that port at the HTTP host, so a client that ignored the setting could not work. Without
the setting the same port is tried on the HTTP host and the sink reports Weaviate unavailable.
"""

from __future__ import annotations

import random
import socket
import threading
import uuid
from datetime import datetime, timezone

import pytest
from sp_stores import weaviate_client
from waits import wait_for

from stream_processor.contracts import CallAnalysis
from stream_processor.stores import ConversationDoc, RetryPolicy, SinkUnavailable, WeaviateSink, s3_uri
from stream_processor.stores.settings import SinkSettings

pytestmark = pytest.mark.stack

DIM = 8
GRPC_HOST = "127.0.0.9"  # a loopback address of its own (all of 127.0.0.0/8 is this machine)


class Relay:
    """TCP relay ``GRPC_HOST:<free port>`` -> ``127.0.0.1:<target port>``, counting connections
    and the bytes each way."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.listener = socket.create_server((GRPC_HOST, 0))
        self.port = self.listener.getsockname()[1]
        self.connections = 0
        self.bytes_up = 0
        self.bytes_down = 0
        self._lock = threading.Lock()
        self._open: list[socket.socket] = []
        self._closed = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def counts(self) -> tuple[int, int, int]:
        with self._lock:
            return self.connections, self.bytes_up, self.bytes_down

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=10)
            upstream.settimeout(None)
            with self._lock:
                self.connections += 1
                self._open += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, "bytes_up"), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, "bytes_down"), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, counter: str) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
                with self._lock:
                    setattr(self, counter, getattr(self, counter) + len(data))
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self._closed.set()
        self.listener.close()
        with self._lock:
            for s in self._open:
                s.close()


@pytest.fixture(scope="module")
def real() -> SinkSettings:
    """The stack's own Weaviate settings (LUPITA_WEAVIATE_*, as the session exports them)."""
    return SinkSettings()


@pytest.fixture
def relay(stack_env, real):
    r = Relay(real.weaviate_grpc_port)
    yield r
    r.close()


@pytest.fixture
def names(real):
    suffix = uuid.uuid4().hex[:8]
    names = (f"TestGrpcHostConversation_{suffix}", f"TestGrpcHostUtterance_{suffix}")
    yield names
    with weaviate_client(real, drop=names):
        pass


def sink_settings(names: tuple[str, str], **kw) -> SinkSettings:
    return SinkSettings(
        weaviate_conversation_collection=names[0], weaviate_utterance_collection=names[1],
        sink_retry_max_attempts=3, sink_retry_initial_seconds=0.01, sink_retry_max_delay_seconds=0.05,
        sink_retry_max_elapsed_seconds=10, weaviate_init_timeout_seconds=2, **kw,
    )


def refused(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def vec(seed: int) -> list[float]:
    rng = random.Random(seed)
    return [rng.uniform(-1, 1) for _ in range(DIM)]


def conversation(call_id: str) -> ConversationDoc:
    analysis = CallAnalysis(call_id=call_id, topics=("salud",), emotion_primary="positive",
                            behavioral_codes=(), facts=(), summary="Todo bien.")
    return ConversationDoc.from_analysis(
        analysis, s3_uri=s3_uri("saludcompartida-legal-archive", f"calls/2026/01/24/{call_id}/audio-full.wav"),
        phone_number_hash=uuid.uuid4().hex * 2, duration_seconds=60.0, region="oaxaca",
        started_at=datetime(2026, 1, 24, 16, 0, tzinfo=timezone.utc),
    )


def test_grpc_goes_to_its_own_host_and_http_to_the_weaviate_host(monkeypatch, real, relay, names):
    monkeypatch.setenv("LUPITA_WEAVIATE_GRPC_HOST", GRPC_HOST)
    monkeypatch.setenv("LUPITA_WEAVIATE_GRPC_PORT", str(relay.port))
    settings = sink_settings(names)
    assert (settings.weaviate_grpc_host, settings.weaviate_host) == (GRPC_HOST, real.weaviate_host)
    assert settings.weaviate_host != GRPC_HOST
    # nothing answers on the relay's port at the HTTP host: gRPC can only work through the relay
    assert refused(settings.weaviate_host, relay.port)

    sink = WeaviateSink.from_settings(settings)
    try:
        assert (sink.host, sink.grpc_host, sink.grpc_port) == (real.weaviate_host, GRPC_HOST, relay.port)
        sink.ensure_collections(DIM)
        call_id = f"test-grpc-host-{uuid.uuid4().hex[:12]}"
        sink.write_call(conversation(call_id), vec(1), [], [])
        assert relay.counts()[0] >= 1, "the sink's client never connected to the gRPC host"
        _, up, down = relay.counts()
        found = sink.similar_calls(vec(1), limit=1)  # a near-vector query is a gRPC call
        assert [c.call_id for c in found] == [call_id]
        wait_for("the query's bytes through the gRPC relay",
                 lambda: relay.counts()[1] > up and relay.counts()[2] > down, timeout=10, interval=0.05)
    finally:
        sink.close()


def test_without_the_setting_grpc_uses_the_weaviate_host(monkeypatch, real, relay, names):
    """The same port without LUPITA_WEAVIATE_GRPC_HOST: tried on the HTTP host, where nothing
    listens: the sink retries, then reports Weaviate unavailable; the relay sees no connection."""
    monkeypatch.delenv("LUPITA_WEAVIATE_GRPC_HOST", raising=False)
    monkeypatch.setenv("LUPITA_WEAVIATE_GRPC_PORT", str(relay.port))
    settings = sink_settings(names)
    assert settings.weaviate_grpc_host == ""
    sink = WeaviateSink.from_settings(settings)
    try:
        assert sink.grpc_host == settings.weaviate_host
        with pytest.raises(SinkUnavailable) as info:
            sink.ensure_collections(DIM)
    finally:
        sink.close()
    assert info.value.store == "weaviate" and info.value.attempts == 3
    assert relay.counts()[0] == 0
