"""The understanding evaluation corpus: scripted two-leg Spanish calls with their truth, rendered
to 8 kHz telephone audio by the simulator's own synthesiser (``loadgen.synth``: espeak-ng + sox).

:func:`build_corpus` composes the calls (deterministic: call ``i`` is always the same call) from
the blocks in :mod:`bench.corpus.scripts` — greeting, two blocks (facts, a real alert cue,
a false friend), farewell — and draws each call's rendering: the voices (several espeak-ng
Spanish voices and variants), speeds and pitches, pauses between turns, the elderly-style long
pauses inside a person's turn, fillers and repetitions, a noise floor and G.711 µ-law.
:func:`render` lays the call out on a stereo array (left = Lupita, right = the person) and
returns, with it, the speech regions of each leg taken from the rendering (the span of each
synthesised piece above -40 dBFS). Audio is cached under ``~/.cache/lupita/understanding-corpus``
(``LUPITA_CACHE_DIR``), never in git.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import unicodedata
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from . import scripts as S

RATE = 8000
CALM, ALERT = "calm", "alert"
LUPITA, PERSON = "lupita", "person"
CORPUS_VERSION = 1

LUPITA_VOICES = (("es-419+f3", 150, 60), ("es-419+f1", 160, 55), ("es+f5", 155, 60), ("es-419+f5", 145, 65))
PERSON_VOICES = (("es-419+f4", 125, 35), ("es-419+f2", 140, 40), ("es+f1", 130, 45), ("es-419+m3", 125, 35),
                 ("es-419", 135, 40), ("es+m1", 120, 30), ("es+klatt", 130, 45), ("es-419+f3", 115, 30),
                 ("es+f4", 125, 40), ("es-419+m1", 120, 35))


@dataclass(frozen=True)
class Piece:
    leg: str
    text: str
    pause_after_s: float


@dataclass
class Call:
    """One scripted call and its truth."""

    call_id: str
    kind: str  # CALM or ALERT
    pieces: list[Piece]
    lupita_voice: tuple[str, int, int]
    person_voice: tuple[str, int, int]
    noise_dbfs: float | None
    mulaw: bool
    alerts: list[str] = field(default_factory=list)  # expected cue ids
    facts: list[tuple[str, str, str]] = field(default_factory=list)  # (type, key, value)
    topics: list[str] = field(default_factory=list)
    codes: list[str] = field(default_factory=list)  # behavioral codes, both legs
    names: list[str] = field(default_factory=list)  # names the person says
    meds: list[str] = field(default_factory=list)  # medication words the person says
    # facts of the truth added after version 1's audio (where a relative lives): not in spec(),
    # so the rendering (and its noise, seeded by the spec) and the cached transcripts stay the same
    extra_facts: list[tuple[str, str, str]] = field(default_factory=list)

    @property
    def all_facts(self) -> list[tuple[str, str, str]]:
        return list(self.facts) + list(self.extra_facts)

    def text(self, leg: str) -> str:
        return " ".join(p.text for p in self.pieces if p.leg == leg)

    def spec(self) -> dict:
        d = asdict(self)
        d.pop("extra_facts")
        return d

    def describe(self) -> str:
        v = self.person_voice
        noise = "clean" if self.noise_dbfs is None else f"noise {self.noise_dbfs:g} dBFS"
        return f"{self.kind}, person {v[0]} {v[1]} wpm, {noise}{', mu-law' if self.mulaw else ''}"


def _fill(text: str, slots: dict[str, str]) -> str:
    return text.format(**slots)


def _person_turn(rng: random.Random, text: str, *, filler: bool = True) -> list[Piece]:
    """A person's turn: maybe a filler before, maybe a repetition, maybe an elderly long pause
    (the turn split at its first sentence or comma boundary, 1.4-2.6 s of silence between)."""
    if filler and rng.random() < 0.3 and not text.startswith(("Eh", "Ay", "Pues")):
        text = rng.choice(S.FILLERS) + text[0].lower() + text[1:]
    if rng.random() < 0.15:
        first = text.split(",")[0].split(".")[0]
        if 2 <= len(first.split()) <= 4:
            text = f"{first}, {first[0].lower() + first[1:]}{text[len(first):]}"
    pause = round(rng.uniform(0.5, 1.2), 2)
    m = re.search(r"[.,?!] ", text)
    if rng.random() < 0.35 and m and 12 < m.end() < len(text) - 12:
        cut = m.end()
        return [Piece(PERSON, text[:cut].strip(), round(rng.uniform(1.4, 2.6), 2)), Piece(PERSON, text[cut:].strip(), pause)]
    return [Piece(PERSON, text, pause)]


def _lupita(rng: random.Random, text: str) -> Piece:
    return Piece(LUPITA, text, round(rng.uniform(0.4, 0.9), 2))


def _add_lupita(call: "Call", rng: random.Random, text: str) -> None:
    """Lupita speaks: one turn, joined to her previous piece when the person has not spoken since."""
    piece = _lupita(rng, text)
    if call.pieces and call.pieces[-1].leg == LUPITA:
        prev = call.pieces.pop()
        piece = Piece(LUPITA, f"{prev.text} {text}", piece.pause_after_s)
    call.pieces.append(piece)


def make_call(i: int, *, short: bool = False) -> Call:
    """Call ``i`` of the corpus (deterministic). Even calls carry one real alert cue
    (cycling through the phrasings); the others are calm, some with a false friend. ``short``:
    one block fewer (the CI subset: an alert call is then only the alert exchange)."""
    rng = random.Random(f"lupita-understanding-{CORPUS_VERSION}-{i}{'-short' if short else ''}")
    kind = ALERT if i % 2 == 0 else CALM
    person = S.PERSONS[i % len(S.PERSONS)]
    call = Call(
        call_id=f"{'ci' if short else 'eval'}-{i:03d}", kind=kind, pieces=[],
        lupita_voice=LUPITA_VOICES[i % len(LUPITA_VOICES)], person_voice=PERSON_VOICES[(i * 7 + i // len(PERSON_VOICES)) % len(PERSON_VOICES)],
        noise_dbfs=rng.choice((None, -55.0, -48.0, -42.0)), mulaw=rng.random() < 0.6,
    )
    lv, pv = call.lupita_voice, call.person_voice
    call.lupita_voice = (lv[0], lv[1] + rng.randint(-10, 10), lv[2])
    call.person_voice = (pv[0], pv[1] + rng.randint(-15, 10), pv[2] + rng.randint(-5, 5))
    _add_lupita(call, rng, _fill(rng.choice(S.GREETINGS), {"person": person}))

    blocks = rng.sample(S.FACT_BLOCKS, (2 if kind == CALM else 1) - short)
    extra: list[tuple[str, object]] = [("block", b) for b in blocks]
    if kind == ALERT:
        extra.insert(rng.randrange(len(extra) + 1), ("alert", S.ALERT_LINES[(i // 2) % len(S.ALERT_LINES)]))
    elif i % 4 in (1, 3) and rng.random() < 0.85:
        extra.insert(rng.randrange(len(extra) + 1), ("false", S.FALSE_FRIENDS[(i // 2) % len(S.FALSE_FRIENDS)]))

    first_person = True
    for what, item in extra:
        if what == "block":
            b: dict = item  # type: ignore[assignment]
            female = rng.random() < 0.5
            rel, relkey = rng.choice([r for r in S.RELATIONS if r[0].endswith("a") == female])
            name = rng.choice(S.FEMALE_NAMES if female else S.MALE_NAMES)
            dish = rng.choice(S.DISHES)
            pet, pet_key, pet_name = rng.choice(S.PETS)
            hour, hour_value = rng.choice(S.HOURS)
            slots = {"rel": rel, "relkey": relkey, "name": name, "city": rng.choice(S.CITIES),
                     "med": rng.choice(S.MEDICATIONS), "dish": dish, "dish_bare": dish.split(" ", 1)[1],
                     "pet": pet, "pet_key": pet_key, "pet_name": pet_name, "hour": hour, "hour_value": hour_value,
                     "person": person, "rel_lives_in": relkey.replace("_name", "_lives_in")}
            k = rng.randrange(len(b["say"]))
            _add_lupita(call, rng, b["ask"])
            say = _fill(b["say"][k], slots)
            if first_person:
                say = "Buenos días, Lupita. " + say if rng.random() < 0.5 else say
            call.pieces.extend(_person_turn(rng, say))
            if b.get("react"):
                _add_lupita(call, rng, b["react"])
            facts = b["facts_by_say"][k] if "facts_by_say" in b else b["facts"]
            call.facts += [tuple(_fill(x, slots) for x in f) for f in facts]  # type: ignore[misc]
            call.extra_facts += [tuple(_fill(x, slots) for x in f) for f in b.get("facts_extra", ())]  # type: ignore[misc]
            call.topics += list(b.get("topics", ()))
            call.codes += list(b.get("codes_person", ())) + list(b.get("codes_lupita", ()))
            call.names += [_fill(x, slots) for x in b.get("names", ())]
            call.meds += [_fill(x, slots) for x in b.get("meds", ())]
        elif what == "alert":
            text, cues = item  # type: ignore[misc]
            _add_lupita(call, rng, rng.choice(S.ALERT_ASKS))
            call.pieces.extend(_person_turn(rng, text, filler=False))
            _add_lupita(call, rng, rng.choice(S.ALERT_REACTS))
            call.alerts += list(cues)
            call.topics += ["salud"]
            if "lo siento mucho" in call.pieces[-1].text:
                call.codes.append("validacion_emocional")
        else:
            text, topics, codes = item  # type: ignore[misc]
            _add_lupita(call, rng, rng.choice(S.FALSE_FRIEND_ASKS))
            call.pieces.extend(_person_turn(rng, text, filler=False))
            call.topics += list(topics)
            call.codes += list(codes)
        first_person = False

    text, codes = rng.choice(S.FAREWELLS)
    _add_lupita(call, rng, _fill(text, {"person": person}))
    call.codes += list(codes)
    call.pieces.append(Piece(PERSON, rng.choice(S.PERSON_FAREWELLS), 0.8))
    call.topics = sorted(set(call.topics))
    call.codes = sorted(set(call.codes))
    call.alerts = sorted(set(call.alerts))
    return call



def build_corpus(n: int = 40) -> list[Call]:
    return [make_call(i) for i in range(n)]


def ci_subset() -> list[Call]:
    """The small fast subset the CI runs (tests/understanding_eval): four short calls, two with a
    real alert cue (a fall, chest pain) and two calm ones (one with a false friend)."""
    return [make_call(i, short=True) for i in (0, 1, 12, 3)]


# --- rendering -----------------------------------------------------------------------------------


def cache_dir() -> Path:
    base = Path(os.environ.get("LUPITA_CACHE_DIR") or Path.home() / ".cache" / "lupita")
    return base / "understanding-corpus"


@dataclass
class Rendered:
    call: Call
    stereo: np.ndarray  # (n, 2) int16, left = Lupita, right = person
    regions: dict[str, list[tuple[float, float]]]  # leg -> speech regions in seconds
    piece_times: list[tuple[float, float]]  # per piece, its region (seconds)


def _trim(samples: np.ndarray, threshold_dbfs: float = -40.0) -> tuple[int, int]:
    level = 32768 * 10 ** (threshold_dbfs / 20)
    loud = np.flatnonzero(np.abs(samples.astype(np.int32)) > level)
    return (int(loud[0]), int(loud[-1]) + 1) if loud.size else (0, 0)


def render(call: Call, *, lead_in_s: float = 0.5) -> Rendered:
    """The call's stereo audio and its speech regions (cached by the call's spec)."""
    from lupita.audio import mulaw_decode, mulaw_encode
    from loadgen.synth import Voice, band_limit, synthesize_utterance

    spec = json.dumps([CORPUS_VERSION, call.spec(), lead_in_s], sort_keys=True, ensure_ascii=False)
    key = hashlib.sha256(spec.encode()).hexdigest()[:24]
    root = cache_dir()
    path = root / f"{call.call_id}-{key}.npz"
    if path.exists():
        z = np.load(path)
        times = [tuple(x) for x in z["times"].tolist()]
        return Rendered(call, z["stereo"], _regions(call, times), times)
    tts = root / "tts"
    voices = {LUPITA: Voice(*call.lupita_voice), PERSON: Voice(*call.person_voice)}
    pieces = [synthesize_utterance(p.text, RATE, voices[p.leg], cache_dir=tts) for p in call.pieces]
    lead = int(lead_in_s * RATE)
    total = lead + sum(len(s) + int(p.pause_after_s * RATE) for s, p in zip(pieces, call.pieces))
    out = np.zeros((total, 2), np.int16)
    pos = lead
    times: list[tuple[float, float]] = []
    for s, p in zip(pieces, call.pieces):
        col = 0 if p.leg == LUPITA else 1
        out[pos:pos + len(s), col] = s
        a, b = _trim(s)
        times.append(((pos + a) / RATE, (pos + b) / RATE))
        pos += len(s) + int(p.pause_after_s * RATE)
    if call.noise_dbfs is not None:
        rng = np.random.default_rng(int(key[:8], 16))
        rms = 32768.0 * 10 ** (call.noise_dbfs / 20)
        mixed = out.astype(np.float64)
        for col in range(2):
            white = np.clip(rng.normal(0.0, 1.0, total) * 8000.0, -32768, 32767).astype(np.int16)
            band = band_limit(white, RATE, RATE).astype(np.float64)[:total]
            mixed[: len(band), col] += band * (rms / (float(np.sqrt(np.mean(band ** 2))) or 1.0))
        out = np.clip(np.round(mixed), -32768, 32767).astype(np.int16)
    if call.mulaw:
        for col in range(2):
            out[:, col] = mulaw_decode(mulaw_encode(out[:, col]))
    root.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")  # two runs may render the same call at once
    np.savez(tmp, stereo=out, times=np.array(times, dtype=np.float64))
    os.replace(tmp, path)
    return Rendered(call, out, _regions(call, times), times)


def _regions(call: Call, times: list[tuple[float, float]]) -> dict[str, list[tuple[float, float]]]:
    regions: dict[str, list[tuple[float, float]]] = {LUPITA: [], PERSON: []}
    for p, (a, b) in zip(call.pieces, times):
        if b > a:
            regions[p.leg].append((a, b))
    return regions


# --- text helpers shared by the harness and the tests ---------------------------------------------


def fold(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    no_accents = "".join(c for c in decomposed if not unicodedata.combining(c))
    return re.sub(r"\s+", " ", re.sub(r"[^\w\s]", " ", no_accents)).strip()


def word_edits(ref: str, hyp: str) -> tuple[int, int]:
    """(word edits, reference words) after :func:`fold`."""
    r, h = fold(ref).split(), fold(hyp).split()
    d = list(range(len(h) + 1))
    for i, rw in enumerate(r, 1):
        prev, d[0] = d[0], i
        for j, hw in enumerate(h, 1):
            prev, d[j] = d[j], min(d[j] + 1, d[j - 1] + 1, prev + (rw != hw))
    return d[len(h)], len(r)
