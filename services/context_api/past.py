"""Relevant past conversations of the caller, from Weaviate's ``LupitaConversation`` collection (the
stream processor writes one object per analysed call, with the call's own vector).

The query, at call start and during the call alike: **the person's latest analysed conversation**
(its Weaviate object, named in the profile's last calls) — "what did we talk about that is like
what we talked about last time". Nothing of the live call is known yet when the call starts (its
utterances reach Weaviate at call end), and embedding a text here would need the stream
processor's embedding model in this service; ``nearObject`` on the latest conversation uses the
vector already stored, so no model is loaded and the query costs one HNSW search.

- **Stored first** (``context_api_past_source = "stored"``, the default): the stream processor runs
  the same query (``nearVector`` with the call's vector, filtered on the person's hash) right after
  it writes a call, and keeps the answer with the call's analysis (``person_past_conversations``,
  read with the profile in the same round trip). When that answer is about the profile's latest
  analysed call it is ranked here and Weaviate is not asked (``outcome="stored"``); otherwise (data
  older than migration 0012, a person whose latest call had no utterance) Weaviate is asked as below.
  The ranking is the same for both, and the order it gives does not change with time (every call
  ages alike), so an answer computed at analysis time is still the one Weaviate would give now.
- **Only this person's objects**: the query is filtered on ``phone_number_hash`` = the caller's hash
  in Weaviate, and every object that comes back is checked again here (one of another person would
  be dropped and counted: ``lupita_context_api_past_conversations_total{outcome="foreign"}``).
- **Ranking**: similarity (1 − cosine distance) × a recency weight ``0.5 ** (age_days / half_life)``;
  the calls already listed as the last calls and the anchor itself are left out.
- **Time budget**: the caller gives the seconds left; the HTTP request is cancelled when they run
  out and the context goes without this part (``outcome="timeout"``), never waits.
- **Cache**: the answer depends only on the person, the anchor and the calls left out, so it is
  kept per (person, anchor, left out) for ``context_api_past_cache_seconds`` (a call's
  assistant-request and its getUserContext calls ask the same question; a new analysed call changes
  the anchor, hence the key). In memory, per process, at most ``context_api_past_cache_size``
  entries (least recently used first out); only answers Weaviate gave are kept, never a timeout.
  After an erasure the person has no profile, so no anchor, and their entries are never read again
  (they age out).

Plain HTTP (Weaviate's GraphQL endpoint, httpx's async client on the event loop): importing the
weaviate client costs seconds at start and its sync client would hold a worker thread per query.
Every value put in the query is checked first (a hex hash, a UUID), so nothing foreign reaches it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import uuid
from collections import OrderedDict
from datetime import datetime
from typing import Any

import httpx

from context_api import metrics
from context_api.settings import ContextApiSettings

log = logging.getLogger("context_api")

_HASH_RE = re.compile(r"^[0-9a-f]{16,128}$")
FIELDS = "call_id phone_number_hash summary topics emotion started_at _additional { id distance }"


class PastConversations:
    """One per app: an async HTTP client to Weaviate, made on first use inside the event loop."""

    def __init__(self, settings: ContextApiSettings) -> None:
        self.settings = settings
        self.k = settings.context_api_past_conversations
        self.collection = settings.weaviate_conversation_collection
        self.half_life_days = settings.context_api_past_half_life_days
        self.url = f"http://{settings.weaviate_host}:{settings.weaviate_http_port}/v1/graphql"
        self._client: httpx.AsyncClient | None = None
        self.cache_s = settings.context_api_past_cache_seconds
        self.cache_size = settings.context_api_past_cache_size
        self._cache: OrderedDict[tuple, tuple[float, list[dict[str, Any]]]] = OrderedDict()

    def query(self, person: str, anchor: str, limit: int) -> str:
        if not _HASH_RE.match(person):
            raise ValueError("person is not a keyed hash")
        anchor = str(uuid.UUID(anchor))
        where = f'{{path: ["phone_number_hash"], operator: Equal, valueText: {json.dumps(person)}}}'
        return (f'{{ Get {{ {self.collection}(nearObject: {{id: "{anchor}"}}, where: {where}, '
                f'limit: {int(limit)}) {{ {FIELDS} }} }} }}')

    async def find(self, person: str, anchor: str | None, exclude: set[str], now: datetime,
                   budget_s: float) -> tuple[list[dict[str, Any]], str | None]:
        """(conversations best first, None) or ([], why not: "off", "no_anchor", "timeout", "error")."""
        if self.k <= 0:
            return [], "off"
        if not anchor:
            metrics.PAST.labels("no_anchor").inc()
            return [], "no_anchor"
        key = (person, anchor, frozenset(exclude))
        hit = self._cache.get(key) if self.cache_s > 0 else None
        if hit is not None and hit[0] > time.monotonic():
            self._cache.move_to_end(key)
            metrics.PAST.labels("cached").inc()
            return list(hit[1]), None
        if budget_s <= 0:
            metrics.PAST.labels("timeout").inc()
            return [], "timeout"
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=httpx.Timeout(self.settings.context_api_weaviate_timeout_ms / 1000),
                                             limits=httpx.Limits(max_connections=32, max_keepalive_connections=16))
        try:
            body = {"query": self.query(person, anchor, self.k * 3 + len(exclude) + 1)}
            r = await asyncio.wait_for(self._client.post(self.url, json=body), budget_s)
            r.raise_for_status()
            data = r.json()
        except asyncio.TimeoutError:
            metrics.PAST.labels("timeout").inc()
            return [], "timeout"
        except Exception as exc:  # noqa: BLE001 - Weaviate down or refusing: the context goes without
            metrics.PAST.labels("error").inc()
            log.warning("past conversations not read", extra={"stage": "context", "error": type(exc).__name__})
            return [], "error"
        if data.get("errors"):
            metrics.PAST.labels("error").inc()
            # the messages name the class or the object, never the person
            log.warning("past conversations query refused", extra={
                "stage": "context", "error": str(data["errors"][0].get("message", ""))[:200]})
            return [], "error"
        objects = ((data.get("data") or {}).get("Get") or {}).get(self.collection) or []
        out = self.rank([{**o, "weaviate_id": (o.get("_additional") or {}).get("id"),
                          "distance": (o.get("_additional") or {}).get("distance")} for o in objects],
                        person, anchor, exclude, now)
        metrics.PAST.labels("ok").inc()
        if self.cache_s > 0:
            self._cache[key] = (time.monotonic() + self.cache_s, out)
            self._cache.move_to_end(key)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return out, None

    def stored(self, person: str, anchor: str | None, stored: tuple[str, list[dict[str, Any]]] | None,
               exclude: set[str], now: datetime) -> list[dict[str, Any]] | None:
        """The past conversations the stream processor stored at the person's last analysis, when
        they are about ``anchor`` (the profile's latest analysed call) — else None (ask Weaviate)."""
        if self.k <= 0 or not anchor or stored is None or self.settings.context_api_past_source != "stored":
            return None
        try:
            if uuid.UUID(stored[0]) != uuid.UUID(anchor):
                return None
        except (TypeError, ValueError):
            return None
        metrics.PAST.labels("stored").inc()
        return self.rank(stored[1], person, anchor, exclude, now)

    def rank(self, objects: list[dict[str, Any]], person: str, anchor: str, exclude: set[str],
             now: datetime) -> list[dict[str, Any]]:
        """The best ``k`` of ``objects`` ({call_id, phone_number_hash, weaviate_id, distance,
        started_at, summary, topics, emotion}): the person's own only, the anchor and ``exclude``
        left out, by similarity x recency weight."""
        out = []
        for o in objects:
            if not isinstance(o, dict):  # a stored row damaged by hand: that item is left out
                continue
            if o.get("phone_number_hash") != person:  # never another caller's
                metrics.PAST.labels("foreign").inc()
                continue
            if o.get("call_id") in exclude or str(o.get("weaviate_id")) == str(anchor):
                continue
            distance = o.get("distance")
            started = _ts(o.get("started_at"))
            if not isinstance(distance, (int, float)) or started is None:
                continue
            similarity = max(0.0, 1.0 - float(distance))
            age_days = max(0.0, (now - started).total_seconds() / 86400)
            score = similarity * 0.5 ** (age_days / self.half_life_days)
            out.append({"call_id": o.get("call_id"), "started_at": started, "summary": o.get("summary") or "",
                        "topics": list(o.get("topics") or []), "emotion": o.get("emotion") or "",
                        "similarity": round(similarity, 3), "score": round(score, 4)})
        out.sort(key=lambda c: (-c["score"], c["call_id"] or ""))
        return out[: self.k]

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()


def _ts(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        out = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return out if out.tzinfo is not None else None  # a time without its zone cannot be aged
