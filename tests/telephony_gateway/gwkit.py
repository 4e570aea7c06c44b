"""The gateway under test: a real :class:`telephony_gateway.server.Gateway` in this process on
127.0.0.1 (free port), streaming into a real media bridge on the local stack's Kafka, and Twilio's
side played by :mod:`telephony_gateway.twilio_sim` (the documented messages, signed with Twilio's
SDK). Metrics are read from this process's Prometheus registry (as deltas: the registry is
shared by the session)."""

from __future__ import annotations

import contextlib
import json

import numpy as np
from prometheus_client import REGISTRY

from lupita.audio import mulaw_decode, mulaw_encode
from telephony_gateway import twilio_sim
from telephony_gateway.server import Gateway
from telephony_gateway.settings import GatewaySettings

AUTH_TOKEN = "test-twilio-auth-token"
# A made-up number listed in tests/kit/logscan.py: it must never reach a log.
PHONE = "+52 951 555 0142"
PARAMS = {"phone": PHONE, "consent": "true", "consentSource": "ivr_prompt_v2", "region": "oaxaca", "language": "es-MX"}


def settings(bridge_target: str, token: str, **overrides) -> GatewaySettings:
    values = dict(
        gateway_host="127.0.0.1", gateway_port=0, gateway_metrics_port=0, bridge_target=bridge_target,
        bridge_tokens=token, gateway_twilio_auth_token=AUTH_TOKEN, gateway_drain_seconds=5,
        gateway_bridge_close_seconds=15, gateway_chime_enabled=False,  # chimekit.chime_settings turns it on
    )
    values.update(overrides)
    return GatewaySettings(**values)


def target_of(bridge) -> str:
    """host:port of an in-process bridge (bridgekit.RunningBridge) or a BridgeProcess."""
    return bridge.target if hasattr(bridge, "target") else f"127.0.0.1:{bridge.bridge.port}"


@contextlib.asynccontextmanager
async def running_gateway(bridge, token: str, **overrides):
    gw = Gateway(settings(target_of(bridge), token, **overrides))
    await gw.start()
    try:
        yield gw
    finally:
        await gw.close()


def url_of(gw: Gateway) -> str:
    return f"ws://127.0.0.1:{gw.port}{gw.settings.gateway_twilio_path}"


def signed_as(gw: Gateway) -> str:
    """The URL Twilio would have dialled (TLS ends in front of the gateway): what it signs."""
    return f"wss://127.0.0.1:{gw.port}{gw.settings.gateway_twilio_path}"


def random_stereo(seconds: float, seed: int = 0) -> np.ndarray:
    """Random samples (a loss or a reordering shows), both columns independent."""
    rng = np.random.default_rng(seed)
    return rng.integers(-12000, 12000, (int(seconds * 8000), 2), dtype=np.int16)


def mulaw_round_trip(x: np.ndarray) -> np.ndarray:
    """What survives G.711 mu-law: the best any Twilio stream can carry."""
    return mulaw_decode(mulaw_encode(np.asarray(x, dtype=np.int16)))


def pcm_bytes(x: np.ndarray) -> bytes:
    return np.asarray(x, dtype="<i2").tobytes()


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


class Deltas:
    """Counter values now vs when it was made: ``d("lupita_gateway_bad_input_total", kind="x")``."""

    def __init__(self, *series: tuple[str, dict]) -> None:
        self.base = {(n, json.dumps(lbl, sort_keys=True)): sample(n, **lbl) for n, lbl in series}

    def __call__(self, name: str, labels: dict | None = None, **more: str) -> float:
        labels = {**(labels or {}), **more}
        key = (name, json.dumps(labels, sort_keys=True))
        return sample(name, **labels) - self.base.get(key, 0.0)


def bad(kind: str) -> tuple[str, dict]:
    return ("lupita_gateway_bad_input_total", {"source": "twilio", "kind": kind})


def outcome(name: str) -> tuple[str, dict]:
    return ("lupita_gateway_calls_total", {"source": "twilio", "outcome": name})


async def play(gw: Gateway, call: twilio_sim.TwilioCall | list, *, speed: float = 0.0, **kw) -> twilio_sim.StreamResult:
    messages = call.messages if isinstance(call, twilio_sim.TwilioCall) else call
    index = call.media if isinstance(call, twilio_sim.TwilioCall) else None
    kw.setdefault("auth_token", AUTH_TOKEN)
    kw.setdefault("sign_as", signed_as(gw))
    return await twilio_sim.stream(url_of(gw), messages, speed=speed, media_index=index, **kw)


def spans(recs, leg: int, rate: int = 8000) -> list[tuple[int, int]]:
    """(start, end) capture time in µs of each of the leg's Kafka records, in chunk order."""
    return [(c.start_ts_us, c.start_ts_us + len(c.payload) // 2 * 1_000_000 // rate) for c in recs.leg_chunks(leg)]


def assert_on_one_clock(recs, leg: int, rate: int = 8000) -> None:
    """The leg starts at the call start and every record begins where the previous one ended."""
    started = recs.started().started_at_us
    expected = started
    for start, end in spans(recs, leg, rate):
        assert start == expected, f"record at {start - started} µs, expected {expected - started} µs"
        expected = end
