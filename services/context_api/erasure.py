"""Erasure of a person (ARCO cancellation, LFPDPPP): remove everything we hold about them except
what the law makes us keep, and say exactly which is which, why, and until when.

Order, each step idempotent (a failed erasure is simply asked again):

1. **Weaviate**: every object of both collections (conversations, utterances) with the person's
   hash or one of their calls' ids.
2. **S3**: the active (processing) copies of their calls are deleted. In the legal archive every
   version under an Object Lock retention that has not ended is RETAINED (COMPLIANCE mode: nobody,
   not even us, can delete it earlier) and queued (``erasure_retained_objects``) for the sweeper;
   versions whose retention has ended are deleted now.
3. **Postgres**, one transaction: facts and their observations, callbacks, utterances, alerts,
   VAPI call rows, consent records, the stored past conversations (``person_past_conversations``),
   the calls and the person's profile (``person_profiles``, which
   the database's own triggers also drop once nothing of the person is left) — deleted; a call
   whose recording is retained keeps only a stub (ids, times, S3 keys, consent flag) with no phone
   number (encrypted or hashed), no summary, analysis or transcript. An ``erasures`` row records
   the counts (not who).
4. **Kafka** is an append-only log: records of a person cannot be deleted one by one, they expire
   with their topic's retention. The answer states, for each topic that carries their voice or
   words, the retention the broker has configured (read from the broker at erasure time) and the
   date by which every record written before the erasure is gone (``kafka``).

Weaviate and S3 go first: if either is unreachable nothing in Postgres is touched yet, and the
person can still be found to try again.

:meth:`Eraser.sweep` (run by the server every ``context_api_erasure_sweep_interval_seconds``)
deletes the retained objects whose retention has ended, then the call stubs left with nothing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from context_api.settings import ContextApiSettings
from lupita.facts import FACT_LOCK_CLASS

log = logging.getLogger("context_api")

LEGAL_REASON = ("Grabación de la llamada en el archivo legal, bajo retención S3 Object Lock en modo "
                "COMPLIANCE (obligación de conservación): no puede borrarse antes de la fecha; se borra "
                "automáticamente al terminar la retención.")
CALL_FILES = ("audio-full.wav", "consent.json", "metadata.json")
# what each topic's records hold of a person (the erasure answer says it)
KAFKA_CONTENT = {
    "audio.chunks": "audio de la llamada", "speech.segments": "audio de los segmentos de voz",
    "transcripts": "transcripción", "call.analysis": "resumen, temas y datos de la llamada",
    "alerts": "alertas con la frase dicha", "call.lifecycle": "inicio y fin de la llamada (teléfono cifrado)",
    # the telephony gateway's Chime path (exists only where it runs)
    "telephony.chime.events": "eventos de llamadas Chime (teléfono cifrado)",
    "telephony.chime.checkpoints": "puntos de reanudación de llamadas Chime (teléfono cifrado)",
    "telephony.chime.dead-letters": "eventos Chime no procesables, tal como llegaron (teléfono cifrado)",
}
KAFKA_NOTE = ("Kafka es un registro de solo añadir: los mensajes no se borran uno a uno; caducan con la "
              "retención del tema, a más tardar en la fecha indicada.")


class ErasureFailed(RuntimeError):
    """A store could not do its part (nothing in Postgres was removed yet if Weaviate/S3 failed)."""


@dataclass
class Report:
    removed: dict[str, Any] = field(default_factory=dict)
    retained: list[dict[str, Any]] = field(default_factory=list)


def _calls(conn: psycopg.Connection, person: str) -> list[dict[str, Any]]:
    return conn.cursor(row_factory=dict_row).execute(
        "SELECT call_id, s3_legal_key, s3_active_key, s3_metadata_key FROM companion_calls "
        "WHERE phone_number_hash = %s ORDER BY call_id", (person,)).fetchall()


def _folder(call: dict[str, Any]) -> str | None:
    for k in ("s3_legal_key", "s3_metadata_key", "s3_active_key"):
        if call.get(k) and "/" in call[k]:
            return call[k].rsplit("/", 1)[0] + "/"
    return None


class Eraser:
    """Erases people; the S3 and Weaviate clients are made on first use (most requests never need them)."""

    def __init__(self, settings: ContextApiSettings) -> None:
        self.settings = settings

    # -- Weaviate

    def _weaviate(self, person: str, call_ids: list[str]) -> dict[str, int]:
        import weaviate
        from weaviate.classes.init import AdditionalConfig, Timeout
        from weaviate.classes.query import Filter

        s = self.settings
        out: dict[str, int] = {}
        try:
            client = weaviate.connect_to_custom(
                http_host=s.weaviate_host, http_port=s.weaviate_http_port, http_secure=False,
                grpc_host=s.weaviate_host, grpc_port=s.weaviate_grpc_port, grpc_secure=False,
                additional_config=AdditionalConfig(timeout=Timeout(init=5, query=30, insert=30)))
        except Exception as exc:  # noqa: BLE001
            raise ErasureFailed(f"weaviate unreachable ({type(exc).__name__})") from None
        try:
            for name in (s.weaviate_conversation_collection, s.weaviate_utterance_collection):
                if not client.collections.exists(name):
                    out[name] = 0
                    continue
                where = Filter.by_property("phone_number_hash").equal(person)
                if call_ids:
                    where = where | Filter.by_property("call_id").contains_any(call_ids)
                removed = 0
                for _ in range(1000):  # delete_many removes at most the server's query limit per call
                    res = client.collections.use(name).data.delete_many(where=where)
                    if res.failed:
                        raise ErasureFailed(f"weaviate refused to delete {res.failed} object(s) of {name}")
                    removed += res.successful
                    if res.matches == 0 or res.successful == 0:
                        break
                out[name] = removed
        except ErasureFailed:
            raise
        except Exception as exc:  # noqa: BLE001
            raise ErasureFailed(f"weaviate failed ({type(exc).__name__})") from None
        finally:
            client.close()
        return out

    # -- S3

    def _s3_client(self) -> Any:
        import boto3
        from botocore.config import Config

        s = self.settings
        return boto3.client(
            "s3", endpoint_url=s.s3_endpoint or None, region_name=s.s3_region,
            aws_access_key_id=s.s3_access_key.get_secret_value() or None,
            aws_secret_access_key=s.s3_secret_key.get_secret_value() or None,
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 3},
                          connect_timeout=5, read_timeout=30))

    def _s3(self, calls: list[dict[str, Any]], now: datetime) -> tuple[int, list[dict[str, Any]]]:
        """Delete what may be deleted; returns (objects deleted, objects retained)."""
        s = self.settings
        deleted, retained = 0, []
        folders = [(c["call_id"], _folder(c)) for c in calls]
        folders = [(cid, f) for cid, f in folders if f]
        if not folders:
            return 0, []
        try:
            s3 = self._s3_client()
            for call_id, folder in folders:
                # the active copy: never locked
                for obj in s3.list_objects_v2(Bucket=s.s3_active_bucket, Prefix=folder).get("Contents", []):
                    if obj["Key"].rsplit("/", 1)[-1] in CALL_FILES:
                        s3.delete_object(Bucket=s.s3_active_bucket, Key=obj["Key"])
                        deleted += 1
                # the legal archive: every version, kept while its retention lasts
                versions = s3.list_object_versions(Bucket=s.s3_legal_bucket, Prefix=folder)
                for v in versions.get("Versions", []) + versions.get("DeleteMarkers", []):
                    if v["Key"].rsplit("/", 1)[-1] not in CALL_FILES:
                        continue
                    vid = v.get("VersionId") or ""
                    kw = {"VersionId": vid} if vid and vid != "null" else {}
                    mode, until = None, None
                    if "Size" in v:  # a real version (not a delete marker): its lock
                        head = s3.head_object(Bucket=s.s3_legal_bucket, Key=v["Key"], **kw)
                        mode, until = head.get("ObjectLockMode"), head.get("ObjectLockRetainUntilDate")
                    if until is not None and until > now:
                        retained.append({"call_id": call_id, "bucket": s.s3_legal_bucket, "key": v["Key"],
                                         "version_id": vid, "lock_mode": mode, "until": until,
                                         "why": LEGAL_REASON})
                        continue
                    s3.delete_object(Bucket=s.s3_legal_bucket, Key=v["Key"], **kw)
                    deleted += 1
        except Exception as exc:  # noqa: BLE001
            raise ErasureFailed(f"s3 failed ({type(exc).__name__})") from None
        return deleted, retained

    # -- Postgres

    @staticmethod
    def _postgres(conn: psycopg.Connection, person: str, calls: list[str], kept: list[str],
                  report: Report) -> int:
        r = report.removed
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (FACT_LOCK_CLASS, person))
            now_calls = {row[0] for row in conn.execute(
                "SELECT call_id FROM companion_calls WHERE phone_number_hash = %s", (person,)).fetchall()}
            if not now_calls <= set(calls):
                # a call of the person was stored meanwhile (its recording and vectors were not handled)
                raise ErasureFailed("a new call of this person arrived during the erasure; ask again")
            gone = [c for c in calls if c not in kept]
            profiles = conn.execute("SELECT count(*) FROM person_profiles WHERE phone_number_hash = %s",
                                    (person,)).fetchone()[0]
            r["user_fact_observations"] = conn.execute(
                "DELETE FROM user_fact_observations WHERE fact_id IN "
                "(SELECT id FROM user_facts WHERE phone_number_hash = %s)", (person,)).rowcount
            r["user_facts"] = conn.execute("DELETE FROM user_facts WHERE phone_number_hash = %s", (person,)).rowcount
            r["scheduled_callbacks"] = conn.execute(
                "DELETE FROM scheduled_callbacks WHERE phone_number_hash = %s", (person,)).rowcount
            r["call_utterances"] = conn.execute(
                "DELETE FROM call_utterances WHERE call_id = ANY(%s)", (calls,)).rowcount
            r["call_alerts"] = conn.execute("DELETE FROM call_alerts WHERE call_id = ANY(%s)", (calls,)).rowcount
            r["vapi_calls"] = conn.execute(
                "DELETE FROM vapi_calls WHERE phone_number_hash = %s OR call_id = ANY(%s)", (person, calls)).rowcount
            r["consent_records"] = conn.execute(
                "DELETE FROM consent_records WHERE (phone_number_hash = %s OR call_id = ANY(%s)) "
                "AND NOT (call_id = ANY(%s))", (person, calls, kept)).rowcount
            conn.execute("UPDATE consent_records SET phone_number_hash = NULL WHERE call_id = ANY(%s)", (kept,))
            r["phone_encrypted"] = conn.execute(
                "SELECT count(*) FROM companion_calls WHERE call_id = ANY(%s) AND phone_encrypted IS NOT NULL",
                (calls,)).fetchone()[0]
            r["companion_calls"] = conn.execute(
                "DELETE FROM companion_calls WHERE call_id = ANY(%s)", (gone,)).rowcount
            r["companion_calls_reduced_to_stub"] = conn.execute(
                "UPDATE companion_calls SET phone_encrypted = NULL, phone_number_hash = NULL, summary = NULL, "
                "topics = NULL, emotion_primary = NULL, behavioral_codes_triggered = NULL, transcript = NULL, "
                "analysis = NULL, weaviate_id = NULL, s3_active_key = NULL, updated_at = now() "
                "WHERE call_id = ANY(%s)", (kept,)).rowcount
            # the triggers dropped it with the person's last call and fact; said and made sure of here
            conn.execute("DELETE FROM person_profiles WHERE phone_number_hash = %s", (person,))
            r["person_profiles"] = profiles
            # the relevant past conversations stored at the person's last analysis (summaries of their calls)
            r["person_past_conversations"] = conn.execute(
                "DELETE FROM person_past_conversations WHERE phone_number_hash = %s", (person,)).rowcount
            erasure_id = conn.execute(
                "INSERT INTO erasures (removed, retained_count) VALUES (%s, %s) RETURNING id",
                (Jsonb(r), len(report.retained))).fetchone()[0]
            for o in report.retained:
                conn.execute(
                    "INSERT INTO erasure_retained_objects (erasure_id, call_id, bucket, key, version_id, lock_mode, "
                    "retain_until, reason) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) "
                    "ON CONFLICT (bucket, key, version_id) DO NOTHING",
                    (erasure_id, o["call_id"], o["bucket"], o["key"], o["version_id"], o["lock_mode"], o["until"],
                     o["why"]))
        return erasure_id

    def sweep(self, pool: Any, wait_s: float, *, now: datetime | None = None, limit: int = 500) -> dict[str, int]:
        """Delete the retained objects whose retention has ended (``erasure_retained_objects``), then
        the call stubs left with nothing retained. Safe with several replicas sweeping at once (rows
        are claimed with SKIP LOCKED; deleting an S3 version twice is harmless)."""
        now = now or datetime.now(timezone.utc)
        out = {"deleted": 0, "failed": 0, "calls_closed": 0}
        with pool.connection(wait_s) as conn, conn.transaction():
            due = conn.execute(
                "SELECT id, call_id, bucket, key, version_id FROM erasure_retained_objects "
                "WHERE deleted_at IS NULL AND (retain_until IS NULL OR retain_until <= %s) "
                "ORDER BY retain_until NULLS FIRST, id LIMIT %s FOR UPDATE SKIP LOCKED", (now, limit)).fetchall()
            if not due:
                return out
            s3 = self._s3_client()
            done, calls = [], set()
            for oid, call_id, bucket, key, version_id in due:
                kw = {"VersionId": version_id} if version_id and version_id != "null" else {}
                try:
                    s3.delete_object(Bucket=bucket, Key=key, **kw)
                except Exception as exc:  # noqa: BLE001 - still locked, store down: next sweep
                    out["failed"] += 1
                    log.warning("retained object not deleted", extra={"stage": "erasure-sweep", "call_id": call_id,
                                                                      "error": type(exc).__name__})
                    continue
                done.append(oid)
                calls.add(call_id)
            conn.execute("UPDATE erasure_retained_objects SET deleted_at = now() WHERE id = ANY(%s)", (done,))
            out["deleted"] = len(done)
            # a stub whose every retained object is gone: the call row and its consent record go too
            closed = [c for c in calls if conn.execute(
                "SELECT NOT EXISTS (SELECT 1 FROM erasure_retained_objects WHERE call_id = %s AND deleted_at IS NULL)",
                (c,)).fetchone()[0]]
            conn.execute("DELETE FROM consent_records WHERE call_id = ANY(%s) AND phone_number_hash IS NULL", (closed,))
            out["calls_closed"] = conn.execute(
                "DELETE FROM companion_calls WHERE call_id = ANY(%s) AND phone_number_hash IS NULL", (closed,)).rowcount
        log.info("erasure sweep", extra={"stage": "erasure-sweep", **out})
        return out

    # -- Kafka

    def kafka_retention(self, erased_at: datetime, timeout_s: float = 5.0) -> list[dict[str, Any]]:
        """Each topic that carries the person's voice or words, its retention as the broker has it,
        and until when records written before ``erased_at`` may still be there. A broker that cannot
        be asked is said (``retention_ms`` None), it does not fail the erasure."""
        from lupita import topics

        names = [(t, KAFKA_CONTENT[t]) for t in (topics.AUDIO_CHUNKS, topics.SPEECH_SEGMENTS, topics.TRANSCRIPTS,
                                                  topics.CALL_ANALYSIS, topics.ALERTS, topics.CALL_LIFECYCLE,
                                                  *topics.TELEPHONY_GATEWAY)]
        found: dict[str, dict[str, Any]] = {}
        problem = None
        try:
            from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient

            admin = KafkaAdminClient(bootstrap_servers=self.settings.kafka_bootstrap, client_id="lupita-context-api-erasure",
                                     request_timeout_ms=int(timeout_s * 1000), bootstrap_timeout_ms=int(timeout_s * 1000))
            try:
                resources = [ConfigResource(ConfigResourceType.TOPIC, self.settings.topic(t),
                                            configs={"retention.ms": None, "cleanup.policy": None}) for t, _ in names]
                described = admin.describe_configs(resources, config_filter="all").get("topic", {})
                for name, configs in described.items():
                    if configs:  # a topic the broker does not have answers with no configs
                        found[name] = {k: v for k, v in configs.items() if isinstance(v, dict)}
            finally:
                admin.close()
        except Exception as exc:  # noqa: BLE001 - said in the answer
            problem = f"broker not asked ({type(exc).__name__})"
        out = []
        for topic, carries in names:
            name = self.settings.topic(topic)
            conf = found.get(name)
            item: dict[str, Any] = {"topic": name, "carries": carries}
            if conf is None:
                item.update(retention_ms=None, until=None, note=problem or "topic not found on the broker")
            else:
                retention = conf.get("retention.ms") or {}
                ms = int(retention["value"]) if retention.get("value") not in (None, "") else None
                limited = ms is not None and ms >= 0
                item.update(retention_ms=ms, cleanup_policy=(conf.get("cleanup.policy") or {}).get("value"),
                            # TOPIC_CONFIG: set on the topic; DEFAULT_CONFIG / STATIC_BROKER_CONFIG: the broker's
                            retention_source=retention.get("config_source"),
                            until=(erased_at + timedelta(milliseconds=ms)).isoformat() if limited else None,
                            note=KAFKA_NOTE if limited else "no time limit configured (retention.ms -1)")
            out.append(item)
        return out

    def erase(self, pool: Any, person: str, wait_s: float) -> dict[str, Any]:
        now = datetime.now(timezone.utc)
        with pool.connection(wait_s) as conn:
            calls = _calls(conn, person)
        call_ids = [c["call_id"] for c in calls]
        report = Report()
        report.removed["weaviate"] = self._weaviate(person, call_ids)
        report.removed["s3_objects"], report.retained = self._s3(calls, now)
        kept = sorted({o["call_id"] for o in report.retained})
        with pool.connection(wait_s) as conn:
            erasure_id = self._postgres(conn, person, call_ids, kept, report)
        kafka = self.kafka_retention(now)
        log.info("person erased", extra={"stage": "erasure", "erasure_id": erasure_id,
                                         "retained": len(report.retained)})
        return {
            "erasure_id": erasure_id,
            "erased_at": now.isoformat(),
            "removed": report.removed,
            "retained": [{**o, "until": o["until"].isoformat(),
                          "then": "borrado por el barrido de retención al terminar"} for o in report.retained],
            "kafka": kafka,
            "not_linked": ("Lo conservado ya no está ligado a la persona: sin teléfono (cifrado ni hash), sin "
                           "resumen, análisis ni transcripción."),
        }
