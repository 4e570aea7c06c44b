"""bench/asr_encode.py's segments of either leg (``--leg``): each scripted piece of the leg, cut
from that leg's own channel of the rendered corpus call, with the piece's text as its reference."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import corpus  # noqa: E402  (bench/corpus)
from asr_encode import PIECE_PAD_S, load_segments, piece_segments  # noqa: E402
from corpus import LUPITA, PERSON, RATE  # noqa: E402


@pytest.fixture(scope="module")
def call() -> corpus.Call:
    return corpus.build_corpus(1)[0]


@pytest.mark.parametrize("who, channel", [(PERSON, 1), (LUPITA, 0)])
def test_a_legs_pieces_are_cut_from_its_own_channel_with_their_text(call, who, channel):
    rendered = corpus.render(call)
    segs = piece_segments(call, who)
    said = [p.text for p in call.pieces if p.leg == who]
    assert segs and [s.truth for s in segs] == said[:len(segs)]
    voice = (call.person_voice if who == PERSON else call.lupita_voice)[0]
    other = rendered.stereo[:, 1 - channel].astype(np.float32) / 32768.0
    for s in segs:
        assert s.voice == voice and s.end_s - s.start_s == pytest.approx(s.audio.size / RATE, abs=1 / RATE)
        own = rendered.stereo[int(s.start_s * RATE): int(s.start_s * RATE) + s.audio.size, channel] / 32768.0
        assert np.array_equal(s.audio, own.astype(np.float32))
        # the leg's speech is in its piece: louder than the other channel over the same span
        span = other[int(s.start_s * RATE): int(s.start_s * RATE) + s.audio.size]
        assert np.sqrt(np.mean(s.audio ** 2)) > np.sqrt(np.mean(span ** 2))
        assert s.start_s >= 0 and s.end_s <= rendered.stereo.shape[0] / RATE + PIECE_PAD_S


def test_lupitas_segments_are_always_her_scripted_pieces(call):
    segs, missed, skipped = load_segments([call], "vad", LUPITA)
    assert (missed, skipped) == (0, []) and [s.truth for s in segs] == [s.truth for s in piece_segments(call, LUPITA)]


def test_the_fallback_threshold_mode_key_reaches_the_options_and_is_checked():
    from asr_encode import parse_mode

    assert parse_mode("trimmed:1.0:10,flp=-10").decode_log_prob_threshold == -10.0
    with pytest.raises(SystemExit, match="fallback_log_prob_threshold must be <= 0"):
        parse_mode("trimmed:1.0:10,flp=0.5")
    with pytest.raises(SystemExit, match="flp=x"):
        parse_mode("trimmed:1.0:10,flp=x")
