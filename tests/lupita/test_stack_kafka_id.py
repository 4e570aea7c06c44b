"""The local Kafka's KRaft cluster id never starts with "-": kafka-storage's argument parser reads
such an id as an option and refuses to format (one draw in 64 of the old generator; a fresh machine's first `stack up` failed that way)."""

from __future__ import annotations

import json
import uuid

import pytest

from lupita_dev.stack import manager

# urlsafe base64 of these bytes starts with "-" ("-" is 62: the first 6 bits all but one set)
DASH = uuid.UUID(bytes=bytes([0xF8]) + bytes(15))
PLAIN = uuid.UUID(bytes=bytes([0x10]) + bytes(15))


def test_a_new_id_is_drawn_again_when_it_would_start_with_a_dash(monkeypatch: pytest.MonkeyPatch) -> None:
    draws = iter([DASH, DASH, PLAIN])
    monkeypatch.setattr(manager.uuid, "uuid4", lambda: next(draws))
    cid = manager._new_kafka_cluster_id()
    assert not cid.startswith("-")
    assert len(cid) == 22


def test_an_old_dash_id_is_replaced_before_formatting(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LUPITA_STACK_DIR", str(tmp_path))
    manager._secrets()  # writes a fresh secrets file
    path = tmp_path / "secrets.json"
    values = json.loads(path.read_text())
    values["kafka_cluster_id"] = "-" + values["kafka_cluster_id"][1:]
    path.write_text(json.dumps(values))
    cid = manager._kafka_cluster_id()
    assert not cid.startswith("-")
    kept = json.loads(path.read_text())
    assert kept["kafka_cluster_id"] == cid
    assert kept["minio_password"] == values["minio_password"]  # the other secrets stay
    assert (path.stat().st_mode & 0o777) == 0o600
