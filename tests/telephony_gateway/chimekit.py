"""Chime's side for the gateway tests: a call's two legs as Kinesis Video streams on the local
GetMedia stand-in (:mod:`telephony_gateway.kvs_sim`), the streaming events EventBridge would
deliver, posted to the gateway's control API, and waits on the call's end."""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass

import aiohttp
import numpy as np
from waits import await_for

from gwkit import PHONE
from telephony_gateway import kvs_sim
from telephony_gateway.chime import call_key

CONTROL_TOKEN = "test-control-token"
T0_MS = 1_764_000_000_000
AWS_ENV = {"AWS_ACCESS_KEY_ID": "test-kvs-key", "AWS_SECRET_ACCESS_KEY": "test-kvs-secret",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}


def aws_env():
    """boto3 signs every request: give it throwaway credentials for the stand-in."""
    saved = {k: os.environ.get(k) for k in AWS_ENV}
    os.environ.update(AWS_ENV)
    return saved


def mono(seconds: float, seed: int) -> np.ndarray:
    """Seeded noise as one leg's 8 kHz PCM16 (distinct per seed: equality checks mean something)."""
    return np.random.default_rng(seed).integers(-12000, 12000, int(seconds * 8000), dtype=np.int16)


def restore_env(saved: dict) -> None:
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def own_bus() -> dict:
    """A Chime events topic, checkpoint topic and consumer group of one test's own (gateways
    given the same ones share the calls as pods of one deployment do)."""
    tag = uuid.uuid4().hex[:10]
    return dict(topic_prefix=f"gwtest-{tag}.", gateway_chime_group_id=f"gwtest-{tag}")


def chime_settings(kvs: kvs_sim.KvsServer, **overrides) -> dict:
    values = dict(gateway_chime_kvs_endpoint=kvs.url, gateway_control_port=0, gateway_control_tokens=CONTROL_TOKEN,
                  gateway_chime_recording_consent=True, gateway_chime_consent_source="ivr_prompt_v2",
                  gateway_chime_idle_seconds=5, gateway_chime_end_grace_seconds=1, gateway_chime_pair_seconds=5,
                  gateway_chime_enabled=True, **own_bus())
    values.update(overrides)
    return values


async def consuming(gw, partitions: int | None = None, timeout: float = 60):
    """Wait until the gateway's Chime consumer is in its group (with ``partitions`` of the topic)."""
    bus = gw.chime_bus
    return await await_for("the gateway's Chime consumer in its group",
                           lambda: bus.consuming and (len(bus.assigned) == partitions if partitions is not None
                                                      else bool(bus.assigned)), timeout=timeout)


@dataclass
class ChimeCall:
    transaction_id: str
    call_id: str
    person: kvs_sim.KvsStream
    lupita: kvs_sim.KvsStream
    events: list[dict]

    @property
    def key(self) -> str:
        return call_key(self.transaction_id)

    def ended(self, status: str = "ENDED") -> dict:
        return kvs_sim.streaming_event(status, transaction_id=self.transaction_id, call_id=self.call_id)


def build_call(kvs: kvs_sim.KvsServer, lupita: np.ndarray, person: np.ndarray, *, lupita_offset_ms: int = 0,
               person_fragment_ms: int = 1000, lupita_fragment_ms: int = 700, first_number: int = 91343852333181432000,
               person_items=None, lupita_items=None, start_numbers: tuple[str, str] | None = None,
               transaction_id: str | None = None, **stream_kw) -> ChimeCall:
    """An inbound call: the person is the caller (``isCaller`` true). Each leg's samples become
    fragments on the Voice Connector's clock; the Lupita leg may start ``lupita_offset_ms`` later
    (its first sample is then at T0 + offset) and is cut into fragments of another length, so the
    two legs' fragment boundaries and first timestamps differ."""
    txn, cid = transaction_id or str(uuid.uuid4()), str(uuid.uuid4())
    tags = kvs_sim.chime_tags(txn, cid)
    p_items = person_items if person_items is not None else kvs_sim.fragments_of(
        person, first_number=first_number, start_ms=T0_MS, tags=tags, fragment_ms=person_fragment_ms)
    l_items = lupita_items if lupita_items is not None else kvs_sim.fragments_of(
        lupita, first_number=first_number + 5000, start_ms=T0_MS + lupita_offset_ms, tags=tags,
        fragment_ms=lupita_fragment_ms)
    p = kvs.add(kvs_sim.KvsStream(kvs_sim.stream_arn(f"{txn}-caller"), list(p_items), **stream_kw))
    l_ = kvs.add(kvs_sim.KvsStream(kvs_sim.stream_arn(f"{txn}-callee"), list(l_items), **stream_kw))
    first = lambda items: next(n for n, _ in items if n is not None)  # noqa: E731
    events = [
        kvs_sim.streaming_event("STARTED", transaction_id=txn, call_id=cid, stream_arn=p.arn, is_caller=True,
                                start_fragment_number=start_numbers[0] if start_numbers else first(p.items),
                                from_number=PHONE, to_number="+15555550100", start_ms=T0_MS),
        kvs_sim.streaming_event("STARTED", transaction_id=txn, call_id=cid, stream_arn=l_.arn, is_caller=False,
                                start_fragment_number=start_numbers[1] if start_numbers else first(l_.items),
                                from_number=PHONE, to_number="+15555550100", start_ms=T0_MS + lupita_offset_ms),
    ]
    return ChimeCall(txn, cid, p, l_, events)


async def post_events(gw, events: list[dict] | dict, token: str = CONTROL_TOKEN, *, wait: bool = True) -> tuple[int, dict]:
    """POST to a gateway's control API (``gw``: a Gateway, or the control port of one in a child
    process). ``wait``: first until the gateway's Chime consumer is in its group (its topics
    exist: a POST before that may get 503 under load, which EventBridge would retry)."""
    if wait and not isinstance(gw, int) and gw.chime_bus is not None:
        await consuming(gw)
    port = gw if isinstance(gw, int) else gw.control.port
    url = f"http://127.0.0.1:{port}/chime/events"
    async with aiohttp.ClientSession() as http:
        async with http.post(url, json=events, headers={"Authorization": f"Bearer {token}"}) as resp:
            return resp.status, await resp.json()


async def ended(gw, call: ChimeCall, parts: int = 1, timeout: float = 60):
    """The reports of the call's parts once ``parts`` of them ended."""
    return await await_for(f"chime call {call.key} ended",
                           lambda: len(gw.chime.finished.get(call.key, [])) >= parts and gw.chime.finished[call.key],
                           timeout=timeout)


def transaction_ids(partitions: int, per_partition: int) -> list[str]:
    """Transaction ids whose events land ``per_partition`` on each of the events topic's
    ``partitions`` (keyed by transaction id, Kafka's default murmur2 partitioner)."""
    from aiokafka.partitioner import murmur2

    out: dict[int, list[str]] = {p: [] for p in range(partitions)}
    while any(len(v) < per_partition for v in out.values()):
        txn = str(uuid.uuid4())
        p = (murmur2(txn.encode()) & 0x7FFFFFFF) % partitions
        if len(out[p]) < per_partition:
            out[p].append(txn)
    return [t for v in out.values() for t in v]
