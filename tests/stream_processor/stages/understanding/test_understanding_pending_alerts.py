"""Pending alerts travel in the understanding table as JSON and come back unchanged (a worker
that died before call_alerts had them rewrites exactly these)."""

from __future__ import annotations

import json

from stream_processor.contracts import AlertHit, EvidenceSpan
from stream_processor.stages.understanding.agent import hit_from_dict, hit_to_dict, new_entry, ready_to_finish


def test_a_pending_alert_survives_the_table_round_trip():
    hit = AlertHit("call-1", "fall", "critical",
                   EvidenceSpan("person", 4, 12.5, 15.0, "me caí anoche en el baño", 3, 10))
    stored = json.loads(json.dumps(hit_to_dict(hit)))  # what the changelog carries
    assert hit_from_dict(stored) == hit


def test_a_new_entry_has_no_pending_alert_and_is_not_ready_to_finish():
    entry = new_entry("call-1", 2)
    assert not entry.get("pending_alerts")
    assert not ready_to_finish(entry)


def test_an_alert_to_verify_says_so_on_the_alerts_topic_and_survives_the_table():
    from stream_processor.stages.understanding.agent import alert_event

    hit = AlertHit("call-2", "fall", "critical", EvidenceSpan("person", 1, 2.0, 4.0, "no me caí anoche", 0, 10),
                   to_verify=True, verification="negator 'no' doubtful (word probability 0.08)")
    ev = alert_event(hit, raised_at_us=1)
    assert ev.to_verify and ev.verification == "negator 'no' doubtful (word probability 0.08)"
    assert hit_from_dict(json.loads(json.dumps(hit_to_dict(hit)))) == hit
    assert not alert_event(AlertHit("call-2", "fall", "critical", hit.evidence), raised_at_us=1).to_verify
