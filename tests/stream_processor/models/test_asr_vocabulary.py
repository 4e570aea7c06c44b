"""Per-call vocabulary biasing (``models/asr/vocabulary.py`` and the local backend's ``hotwords``).

Pure parts: which facts become vocabulary, the order (the person's words before the lexicon), the
limits. With the real model: each decode gets its own call's words and no other call's, even when
two calls decode at the same time on two threads of one shared model. Whether biasing helps
(name recall) is measured by ``bench/asr_encode.py`` (``vocab=`` modes), not asserted here.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from loadgen.synth import DEFAULT_VOICES, PERSON, synthesize_utterance
from stream_processor.models.asr.vocabulary import (
    HEALTH_LEXICON_ES_MX, call_vocabulary, fact_terms, hotwords_text,
)
from stream_processor.models.asr.whisper_local import WhisperLocal, WhisperOptions
from stream_processor.stages.transcriber.scheduler import PERSON_FINAL, DecodeScheduler

RATE = 8000
FACTS_A = [("family", "grandson_name.rodrigo", "Rodrigo"), ("health", "medication.losartan", "losartán"),
           ("place", "hometown", "Oaxaca"), ("preference", "favorite_dish", "el mole negro de su mamá los domingos")]
FACTS_B = [("family", "daughter_name.teresa", "Teresa"), ("pet", "dog_name.canelo", "Canelo"),
           ("place", "son_city", "Chicago")]


def test_naming_facts_become_terms_and_sentences_do_not():
    assert fact_terms(FACTS_A) == ["Rodrigo", "losartán", "Oaxaca"]
    assert fact_terms([("routine", "wake_time", "06:00"), ("preference", "music", "boleros")]) == []
    assert fact_terms([("other", "doctor_name.ruiz", "doctor Ruiz")]) == ["doctor Ruiz"]  # by its key
    assert fact_terms([("family", "son_name", "  ")]) == []


def test_the_persons_words_come_first_then_the_lexicon_without_duplicates():
    terms = call_vocabulary(FACTS_A)
    assert terms[:3] == ("Rodrigo", "losartán", "Oaxaca")
    assert "metformina" in terms
    folded = [t.casefold().replace("á", "a") for t in terms]
    assert len(folded) == len(set(folded))  # "losartán" of the facts, not again from the lexicon
    assert call_vocabulary() == tuple(dict.fromkeys(HEALTH_LEXICON_ES_MX))[: len(call_vocabulary())]


def test_the_vocabulary_is_bounded():
    many = [("family", f"friend_name.{i}", f"Nombre{i}") for i in range(100)]
    assert len(call_vocabulary(many, max_terms=10)) == 10
    assert len(", ".join(call_vocabulary(many, max_chars=60))) <= 60
    assert hotwords_text(()) is None
    assert hotwords_text(("Rodrigo", "Oaxaca")) == "Rodrigo, Oaxaca"


@pytest.fixture(scope="module")
def model() -> WhisperLocal:
    # greedy, no fallback: this is about which words each decode gets, not about their quality
    return WhisperLocal(threads=1, num_workers=2, options=WhisperOptions(beam_size=1, temperatures=(0.0,)))


@pytest.mark.timeout(900)  # four real decodes on a shared 2-core machine
def test_concurrent_calls_never_share_their_words(model, monkeypatch):
    """Two calls decode at once on two threads of one model; each decode's hotwords are its own
    call's, and a decode without vocabulary gets none (the model keeps no vocabulary)."""
    audio = {
        "a": synthesize_utterance("Mi nieto vino a verme ayer.", RATE, DEFAULT_VOICES[PERSON]),
        "b": synthesize_utterance("Mi hija me habló por teléfono.", RATE, DEFAULT_VOICES[PERSON]),
    }
    vocab = {"a": call_vocabulary(FACTS_A), "b": call_vocabulary(FACTS_B)}
    seen: list[tuple[int, str | None]] = []
    lock = threading.Lock()
    inner = model._model.transcribe

    def spy(x, **kwargs):
        with lock:
            seen.append((x.size, kwargs.get("hotwords")))
        return inner(x, **kwargs)

    monkeypatch.setattr(model._model, "transcribe", spy)
    sched = DecodeScheduler(2, name="test-vocab")
    try:
        futures = []
        for _ in range(1):
            for call in ("a", "b"):
                pcm = audio[call].astype(np.float32) / 32768
                futures.append((call, sched.submit(PERSON_FINAL, lambda p=pcm, c=call: model.transcribe(
                    p, RATE, vocabulary=vocab[c]))))
        results = [(call, f.result(300)) for call, f in futures]
        biased = len(seen)
        plain = model.transcribe(audio["a"].astype(np.float32) / 32768, RATE)
    finally:
        sched.shutdown(wait=True)
    assert all(r.text for _, r in results) and plain is not None
    size = {call: int(np.ceil(a.size * 2)) for call, a in audio.items()}  # 8 -> 16 kHz
    by_size = {v: k for k, v in size.items()}
    assert len(by_size) == 2
    assert biased >= 2
    for n, hot in seen[:biased]:
        call = by_size[n]
        other = "b" if call == "a" else "a"
        assert hot == hotwords_text(vocab[call])
        own = set(fact_terms(FACTS_A if call == "a" else FACTS_B))
        others = set(fact_terms(FACTS_B if other == "b" else FACTS_A)) - set(HEALTH_LEXICON_ES_MX)
        assert own <= set(hot.split(", ")) and not others & set(hot.split(", ")), (call, hot)
    assert seen[biased:] and all(hot is None for _, hot in seen[biased:])  # no vocabulary given, none used
