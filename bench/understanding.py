"""Understanding on imperfect speech: the evaluation corpus (``bench/corpus``) through the pipeline's
cores, stage by stage, against a clean-text baseline in the same run.

Each call of the corpus (scripted two-leg Spanish dialogues with their truth, rendered by espeak-ng
+ sox to 8 kHz telephone audio with several voices, speeds, pauses, noise and µ-law) goes through
the same code ``lupita replay`` runs (``--path core``, the only path so far; it says so in the
output): the stereo audio in 100 ms ``AudioChunk`` records into
:class:`~stream_processor.stages.vad.core.VadCore` (the batched Silero VAD of the vad agent, the
worker's settings), every FINAL segment through the configured transcriber (Whisper base, int8,
the worker's ASR settings) and the transcriber stage's ``transcript_event``, each final into
:class:`~stream_processor.stages.understanding.core.CallUnderstanding` (``on_final`` → the
:class:`AlertDetector`), and at the end the configured analyzer (local rules + USE embedding
prototypes). The baseline runs the same understanding on the script itself (one utterance per
spoken piece, the rendering's times, confidence 1.0), so what the audio path loses is visible.

Printed, per stage: VAD frame F1 (10 ms frames, against the speech regions of the rendering),
WER per leg, name and medication recall (said by the person, found in her leg's transcript), the
rate of empty finals on voiced segments, alert recall and false alerts per 100 calls (and per
100 calm calls), fact precision / recall on (type, key, value), topic accuracy, code accuracy.

    .venv/bin/python bench/understanding.py                     # 40 calls (~40-60 min on 2 shared cores)
    .venv/bin/python bench/understanding.py --calls 8 --json
    .venv/bin/python bench/understanding.py --asr-cache         # reuse cached transcripts (same audio, same ASR settings)
    .venv/bin/python bench/understanding.py --claude-standin    # + the Claude path against a local Messages API server

The audio is rendered once and cached under ``~/.cache/lupita/understanding-corpus``; with
``--asr-cache`` the transcripts are too (only what follows ASR is recomputed: for catalogue work).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import os
import platform
import re
import sys
import time
import wave
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import corpus  # noqa: E402  (bench/corpus)
from corpus import CALM, LUPITA, PERSON, RATE, Call, fold, word_edits  # noqa: E402

RESULTS_DIR = Path(__file__).resolve().parent / "results"
FRAME_S = 0.01
IGNORED_CODES = frozenset({"echo_open_question"})  # its truth depends on the person's exact words


# ------------------------------------------------------------------------------------------ the cores


class _Body(io.BytesIO):
    pass


class _OneObjectS3:
    """What ``Replayer.segments`` reads from S3: here, the rendered call as a WAV body."""

    def __init__(self) -> None:
        self.wav = b""

    def get_object(self, Bucket: str, Key: str) -> dict[str, Any]:  # noqa: N803 - boto3's names
        return {"Body": _Body(self.wav)}


def wav_bytes(stereo: np.ndarray) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(stereo.astype("<i2").tobytes())
    return buf.getvalue()


@dataclass
class Models:
    settings: Any
    replayer: Any
    services: Any
    detectors: dict[str, Any]
    asr_key: str
    # more analyzers measured on the same utterances (name -> analyzer), e.g. the Claude path
    analyzers: dict[str, Any] = field(default_factory=dict)
    # the key new transcripts are saved under (today's settings), when asr_key names an earlier run's
    save_key: str | None = None


_LINE = re.compile(r"^\[(lupita|person) (\d+) \| ([\d.]+)-([\d.]+) s\] (.*)$")


class MessagesStandIn:
    """A local server speaking Anthropic's Messages wire format (``POST /v1/messages``), for the
    Claude path of the analyzer (``--analyzer anthropic-standin``) through the official client.

    It checks each request as the API would need it (model, max_tokens, system, the forced
    ``record_call_analysis`` tool with its input_schema, the transcript lines) and answers a
    ``tool_use`` block whose input is what the local rules read in the transcript lines it was
    sent (parsed back from the request, words and all: no other channel), in the schema's shape
    and with quotes of the transcript. So the figures measure the Claude path end to end, request
    to fact store: prompt and schema, the client, validation, evidence quotes located in the
    utterances, canonical keys, protected classes, the transcription calibration of confidences.
    They do not measure Claude's reading, which needs the real API."""

    def __init__(self) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        from stream_processor.contracts import Utterance
        from stream_processor.models.analyzer.local import LocalAnalyzer
        from stream_processor.models.analyzer.schema import to_payload

        reader = LocalAnalyzer()
        stand_in = self
        self.requests = 0
        self.problems: list[str] = []

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # no transcript in the bench output
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))))
                stand_in.requests += 1
                problems = []
                if self.path != "/v1/messages":
                    problems.append(f"path {self.path}")
                if not self.headers.get("x-api-key") or not self.headers.get("anthropic-version"):
                    problems.append("x-api-key / anthropic-version headers")
                tools = body.get("tools") or [{}]
                if body.get("tool_choice", {}).get("name") != tools[0].get("name") or "input_schema" not in tools[0]:
                    problems.append("forced tool with its input_schema")
                system = body.get("system") or ""
                for word in ("evidence", "protected", "medication", "_lives_in", "next_appointment"):
                    if word not in system:
                        problems.append(f"system prompt lacks {word!r}")
                stand_in.problems.extend(problems)
                text = body["messages"][0]["content"]
                utts = []
                for line in text.splitlines():
                    m = _LINE.match(line)
                    if m:
                        utts.append(Utterance("standin", m.group(1), int(m.group(2)), float(m.group(3)),
                                              float(m.group(4)), m.group(5), 1.0))
                payload = to_payload(reader.analyze("standin", utts), utts) if utts else None
                answer = {"id": f"msg_{stand_in.requests}", "type": "message", "role": "assistant",
                          "model": body.get("model"), "stop_reason": "tool_use", "stop_sequence": None,
                          "content": [{"type": "tool_use", "id": f"toolu_{stand_in.requests}",
                                       "name": tools[0].get("name"), "input": payload}],
                          "usage": {"input_tokens": len(text) // 4, "output_tokens": 100}}
                data = json.dumps(answer).encode()
                self.send_response(200 if payload is not None and not problems else 400)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def anthropic_standin_analyzer(settings: Any, embedder: Any) -> tuple[Any, MessagesStandIn]:
    """The configured analyzer with ``LUPITA_ANALYZER_BACKEND=anthropic`` pointed at a
    :class:`MessagesStandIn` (fallback to local as configured: a fallback shows in the figures)."""
    from pydantic import SecretStr

    from stream_processor.models.analyzer.factory import build_analyzer

    server = MessagesStandIn()
    s = settings.model_copy(update={"analyzer_backend": "anthropic", "analyzer_anthropic_base_url": server.url,
                                    "analyzer_anthropic_api_key": SecretStr("bench-stand-in"),
                                    "analyzer_max_attempts": 1})
    return build_analyzer(s, embedder=embedder), server


def load_models(detectors: dict[str, Callable[[], Any]] | None = None, *, claude_standin: bool = False) -> Models:
    """The worker's models, from the worker's settings (``.stack/env`` / ``LUPITA_*``)."""
    from stream_processor.models.analyzer.factory import build_analyzer
    from stream_processor.models.embeddings.factory import build_embedder
    from stream_processor.replay import Replayer, ReplaySettings
    from stream_processor.stages.understanding.alerts import AlertDetector
    from stream_processor.stages.understanding.core import UnderstandingServices

    settings = ReplaySettings()
    emb = build_embedder(settings)
    det = AlertDetector.from_settings(settings)
    services = UnderstandingServices(analyzer=build_analyzer(settings, embedder=emb), embedder=emb, weaviate=None,
                                     postgres=None, detector=det, legal_bucket="eval")
    replayer = Replayer(settings, services=services, s3=_OneObjectS3())
    # "catalogue": the detector the worker runs (the catalogue as configured, its uncertainty rules
    # judging a negator by the utterance's confidence, which is all CallUnderstanding passes on);
    # "uncertainty off": every negator and past marker believed, exact words only (the detector
    # before issue 11 §2); "word probabilities": the catalogue's detector given each transcript's
    # word probabilities (what the worker gets once the understanding agent passes them on)
    # "no approximate phrases": the word-probabilities detector without the approximate reading of
    # whole cue and exclude phrases (the detector before it, measured in the same run)
    built: dict[str, Any] = {"uncertainty off": AlertDetector(det.catalogue, uncertainty=False), "catalogue": det,
                             "no approximate phrases": WordsDetector(AlertDetector(det.catalogue,
                                                                                   approximate_phrases=False)),
                             "word probabilities": WordsDetector(det)}
    for name, make in (detectors or {}).items():
        built[name] = make()
    asr_key = transcript_key(settings)
    analyzers: dict[str, Any] = {}
    if claude_standin:
        analyzers["anthropic (stand-in)"], _server = anthropic_standin_analyzer(settings, emb)
    return Models(settings, replayer, services, built, asr_key, analyzers)


# Bumped by hand when a change of the transcriber's code or of a default is meant to invalidate the
# transcripts cached so far (the key below sees only the settings that differ from their defaults).
# 3: packing (LUPITA_ASR_PACK_MAX_SECONDS=30) and the guarded trimmed encoder window became defaults.
# 4: the trimmed window is at least 10 s and the guard is off by default.
# 5: no temperature fallback by default (LUPITA_ASR_TEMPERATURES=[0.0]); 6: the one-step ladder again.
# 7: the ladder falls back on repetition loops only (LUPITA_ASR_TEMPERATURE_FALLBACK_LOGPROB_THRESHOLD=-10).
ASR_CACHE_VERSION = 7
# Settings of the ASR/VAD/transcriber prefixes that never change a transcript's words: threads,
# queues, retries and timeouts, the state's lifetimes, the cloud backends' models (in the key only
# when that backend is the one configured).
_NOT_SHAPING = re.compile(
    r"(threads|num_workers|_timeout_seconds|_max_attempts|_backoff_seconds|_max_backoff_seconds"
    r"|_retry_after_seconds|_batch_max_records|_batch_within_ms|_max_held_chunks|_grace_seconds"
    r"|_idle_seconds|_orphan_seconds|_retention_seconds|_tick_seconds|_max_in_flight|_partial_after_s"
    r"|_partial_every_s|_partial_beam_size|_skip_stale_partials|_max_gap_s)$")


def transcript_key(settings: Any) -> str:
    """The ASR cache key: a canonical form of what shapes a final transcript, stable across new
    settings. The ``asr_``, ``vad_`` and ``transcriber_`` settings that may change the words
    (operational ones left out), each only when it differs from its default, plus the transcriber's
    identity (backend, model, device type, language) always and :data:`ASR_CACHE_VERSION`. So a new
    setting whose default keeps today's behaviour leaves the key, and the cached transcripts, as
    they are; a run with a setting changed gets its own key."""
    from stream_processor.models.asr import whisper_local

    fields = type(settings).model_fields
    shaping: dict[str, str] = {}
    for k, v in settings.model_dump().items():
        if not k.startswith(("asr_", "vad_", "transcriber_")) or "key" in k or _NOT_SHAPING.search(k):
            continue
        if k.startswith(("asr_openai_", "asr_deepgram_")) and not k.startswith(f"asr_{settings.asr_backend}_"):
            continue
        if v != fields[k].default:
            shaping[k] = str(v)
    identity = {"backend": settings.asr_backend, "language": settings.asr_language,
                "compute_type": settings.asr_compute_type,
                "model": whisper_local.MODEL_NAME if settings.asr_backend == "local" else ""}
    canon = json.dumps({"v": ASR_CACHE_VERSION, "id": identity, "set": shaping}, sort_keys=True)
    return hashlib.sha256(canon.encode()).hexdigest()[:16]


class WordsDetector:
    """An AlertDetector fed each utterance's transcript words with their probabilities (set per
    call in ``words``, keyed by (leg, seq)); ``CallUnderstanding.on_final`` calls its ``scan``."""

    def __init__(self, detector: Any) -> None:
        self.detector = detector
        self.words: dict[tuple[str, int], list[tuple[str, float | None]]] = {}

    def scan(self, utterance: Any, seen: set[str] | None = None, *, words: Any = None) -> list[Any]:
        if words is None:
            words = self.words.get((utterance.leg, utterance.seq))
        return self.detector.scan(utterance, seen, words=words)


@dataclass
class Final:
    leg: str
    seq: int
    start_s: float
    end_s: float
    text: str
    confidence: float
    event: bytes  # the TranscriptEvent
    scripted: bool = False  # the script's words, not the ASR's (Lupita's leg with --lupita-leg script)


def _save(path: Path, finals: list[Final]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([{"leg": f.leg, "seq": f.seq, "start_s": f.start_s, "end_s": f.end_s, "text": f.text,
                                 "confidence": f.confidence, "event": base64.b64encode(f.event).decode()}
                                for f in finals]))


def _load(path: Path) -> list[Final]:
    return [Final(r["leg"], r["seq"], r["start_s"], r["end_s"], r["text"], r["confidence"],
                  base64.b64decode(r["event"])) for r in json.loads(path.read_text())]


def script_finals(rendered: corpus.Rendered, finals: list[Final], leg: str) -> list[Final]:
    """``leg``'s finals with the script's words instead of the ASR's: each spoken piece of the leg
    goes to the segment it overlaps most (a segment with no piece gets no text), confidence 1."""
    from lupita.v1 import events_pb2

    mine = [f for f in finals if f.leg == leg]
    texts: dict[int, list[str]] = defaultdict(list)
    for p, (a, b) in zip(rendered.call.pieces, rendered.piece_times):
        if p.leg != leg or not mine:
            continue
        best = max(range(len(mine)), key=lambda k: min(b, mine[k].end_s) - max(a, mine[k].start_s))
        texts[best].append(p.text)
    out = [f for f in finals if f.leg != leg]
    for k, f in enumerate(mine):
        ev = events_pb2.TranscriptEvent()
        ev.ParseFromString(f.event)
        del ev.words[:]
        ev.text = " ".join(texts.get(k, []))
        ev.confidence = 1.0
        out.append(Final(f.leg, f.seq, f.start_s, f.end_s, ev.text, 1.0, ev.SerializeToString(), scripted=True))
    return out


def transcribe_call(models: Models, rendered: corpus.Rendered, *, use_cache: bool,
                    lupita_asr: bool = True) -> tuple[list[Final], bool]:
    """VAD + ASR of one rendered call through the replay's code; (finals, from cache).
    ``lupita_asr=False``: Lupita's segments are not transcribed; they carry the script's words."""
    from stream_processor.records import LEG_NAMES
    from stream_processor.replay import CallEntry

    call = rendered.call
    audio_key = hashlib.sha256(rendered.stereo.tobytes()).hexdigest()[:16]
    path = corpus.cache_dir() / "asr" / f"{call.call_id}-{audio_key}-{models.asr_key}.json"
    person_path = path.with_name(path.stem + "-person.json")
    if use_cache and path.exists():
        finals = _load(path)
        return (finals if lupita_asr else script_finals(rendered, finals, LUPITA)), True
    if use_cache and not lupita_asr and person_path.exists():
        return script_finals(rendered, _load(person_path), LUPITA), True
    started = datetime(2026, 12, 1, 10, 0, tzinfo=timezone.utc)
    entry = CallEntry(call.call_id, "recorded", None, True, "eval/call.wav", None, started, None, None, None, None)
    models.replayer.s3.wav = wav_bytes(rendered.stereo)
    segs, _, _ = models.replayer.segments(entry)
    finals: list[Final] = []
    for seg in segs:
        if not lupita_asr and LEG_NAMES[seg.leg] == LUPITA:
            from stream_processor.stages.transcriber.core import transcript_event

            ev = transcript_event(seg.to_proto(time.time_ns() // 1000), None, emitted_at_us=time.time_ns() // 1000)
        else:
            ev = models.replayer.transcript(seg)
        conf = ev.confidence if ev.HasField("confidence") else 1.0
        finals.append(Final(LEG_NAMES[ev.leg], int(ev.seq), seg.start_us / 1e6, seg.end_us / 1e6, ev.text,
                            float(conf), ev.SerializeToString()))
    if models.save_key and models.save_key != models.asr_key:  # today's settings: today's key
        path = path.with_name(path.name.replace(models.asr_key, models.save_key))
        person_path = path.with_name(path.stem + "-person.json")
    _save(path if lupita_asr else person_path, finals)
    return (finals if lupita_asr else script_finals(rendered, finals, LUPITA)), False


def asr_utterances(call: Call, finals: list[Final]) -> tuple[list[Any], dict[tuple[str, int], list]]:
    """The finals as the understanding agent sees them (``utterance_of``), in end-of-speech order,
    and each one's transcript words with their probabilities."""
    from lupita.v1 import events_pb2

    from stream_processor.stages.understanding.agent import utterance_of

    out = []
    words: dict[tuple[str, int], list] = {}
    for f in sorted(finals, key=lambda f: (f.end_s, f.leg, f.seq)):
        ev = events_pb2.TranscriptEvent()
        ev.ParseFromString(f.event)
        u = utterance_of(ev)
        out.append(u)
        words[(u.leg, u.seq)] = [(w.word, w.probability if w.HasField("probability") else None) for w in ev.words]
    return out, words


def script_utterances(rendered: corpus.Rendered) -> list[Any]:
    """The baseline: the script itself, one utterance per spoken piece, at the rendering's times."""
    from stream_processor.contracts import Utterance

    seqs: Counter[str] = Counter()
    out = []
    for p, (a, b) in zip(rendered.call.pieces, rendered.piece_times):
        out.append(Utterance(rendered.call.call_id, p.leg, seqs[p.leg], a, b, p.text, 1.0))
        seqs[p.leg] += 1
    return out


def understand(models: Models, call_id: str, utts: list[Any],
               words: dict[tuple[str, int], list] | None = None) -> dict[str, Any]:
    """Alerts (every detector, each on its own CallUnderstanding) and the analysis of one call."""
    from stream_processor.stages.understanding.core import CallUnderstanding

    svc = models.services
    alerts: dict[str, list[Any]] = {}
    cu = with_words = None
    for name, det in models.detectors.items():
        if isinstance(det, WordsDetector):
            det.words = words or {}
        cu = CallUnderstanding(call_id)
        cu.start(started_at_us=1, phone_hash=None, region=None, consent=True, detector=det)
        hits: list[Any] = []
        for u in utts:
            # the worker's path: the final's words reach the detector and the conversation state
            # (the analyzer reads them from there); WordsDetector stands in for the detector given
            # none, the "catalogue" column
            given = (words or {}).get((u.leg, u.seq)) if isinstance(det, WordsDetector) else None
            hits.extend(cu.on_final(u, det, svc.sentiment_of, words=given))
        alerts[name] = hits
        if isinstance(det, WordsDetector):
            with_words = cu
    cu = with_words or cu
    assert cu is not None and cu.conversation is not None
    # as finish_call does: the utterances and their words from the call's state
    t = time.thread_time()
    analysis = svc.analyzer.analyze(call_id, cu.utterances(), words=cu.conversation.words())
    cpu = time.thread_time() - t
    more = {name: a.analyze(call_id, cu.utterances(), words=cu.conversation.words())
            for name, a in models.analyzers.items()}
    return {"alerts": alerts, "analysis": analysis, "blank": cu.blank_finals, "analyses": more, "analyzer_cpu_s": cpu}


# ------------------------------------------------------------------------------------------ scoring


def frames(regions: list[tuple[float, float]], n: int) -> np.ndarray:
    out = np.zeros(n, bool)
    for a, b in regions:
        out[int(round(a / FRAME_S)):int(round(b / FRAME_S))] = True
    return out


def fact_tuple(fact_type: str, key: str, value: str) -> tuple[str, str, str]:
    return (fact_type, key.split(".", 1)[0], fold(value))


def fact_match(truth: tuple[str, str, str], got: tuple[str, str, str]) -> bool:
    """Same type and key; the same value after folding (preferences: one value contains the other,
    "mole negro" vs "el mole negro para toda la familia")."""
    if truth[:2] != got[:2]:
        return False
    if truth[1] in ("likes", "dislikes"):
        return bool(truth[2]) and bool(got[2]) and (truth[2] in got[2] or got[2] in truth[2])
    return truth[2] == got[2]


def said(word: str, text: str) -> bool:
    return re.search(rf"(?<!\w){re.escape(fold(word))}(?!\w)", fold(text)) is not None


@dataclass
class Score:
    """Counts over calls; one per (column, subset)."""

    calls: int = 0
    calm_calls: int = 0
    vad: Counter = field(default_factory=Counter)  # tp, fp, fn frames
    edits: Counter = field(default_factory=Counter)  # per leg
    words: Counter = field(default_factory=Counter)
    names: list[int] = field(default_factory=lambda: [0, 0])  # found, said
    meds: list[int] = field(default_factory=lambda: [0, 0])
    voiced: int = 0
    voiced_empty: int = 0
    alerts: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))  # detector -> tp fn fp fp_calm
    missed: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    false: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    facts: Counter = field(default_factory=Counter)  # tp_truth, truth, tp_pred, pred
    topic_acc: list[float] = field(default_factory=list)
    topic_pred: Counter = field(default_factory=Counter)  # right, predicted
    topics_empty: int = 0
    codes: Counter = field(default_factory=Counter)  # tp, truth, pred, exact calls
    scripted_legs: set = field(default_factory=set)  # legs given the script's words instead of ASR
    more: dict = field(default_factory=dict)  # analyzer name -> Score of its analyses (facts, topics, codes)
    fallbacks: int = 0  # analyses answered by the fallback analyzer
    analyzer_cpu_s: list = field(default_factory=list)  # CPU seconds of the configured analyzer, per call


def score_call(s: Score, call: Call, res: dict[str, Any], *, utts: list[Any], finals: list[Final] | None,
               rendered: corpus.Rendered) -> None:
    s.calls += 1
    s.calm_calls += call.kind == CALM
    if finals is not None:
        n = int(len(rendered.stereo) / RATE / FRAME_S) + 1
        for leg in (LUPITA, PERSON):
            truth = frames(rendered.regions[leg], n)
            got = frames([(f.start_s, f.end_s) for f in finals if f.leg == leg], n)
            s.vad["tp"] += int((truth & got).sum())
            s.vad["fp"] += int((~truth & got).sum())
            s.vad["fn"] += int((truth & ~got).sum())
        for f in finals:
            if f.scripted:
                continue
            overlap = sum(max(0.0, min(b, f.end_s) - max(a, f.start_s)) for a, b in rendered.regions[f.leg])
            if overlap >= 0.3:
                s.voiced += 1
                s.voiced_empty += not f.text.strip()
    for leg in (LUPITA, PERSON):
        if finals is not None and any(f.scripted for f in finals if f.leg == leg):
            s.scripted_legs.add(leg)
            continue
        hyp = " ".join(u.text for u in sorted(utts, key=lambda u: u.start_s) if u.leg == leg)
        e, w = word_edits(call.text(leg), hyp)
        s.edits[leg] += e
        s.words[leg] += w
    person_text = " ".join(u.text for u in utts if u.leg == PERSON)
    for bucket, words in ((s.names, call.names), (s.meds, call.meds)):
        for w in words:
            bucket[1] += 1
            bucket[0] += said(w, person_text)
    truth_alerts = set(call.alerts)
    for name, hits in res["alerts"].items():
        got = {h.cue_id for h in hits}
        c = s.alerts[name]
        c["tp"] += len(got & truth_alerts)
        c["fn"] += len(truth_alerts - got)
        c["fp"] += len(got - truth_alerts)
        c["fp_calm"] += len(got - truth_alerts) if call.kind == CALM else 0
        sure = {h.cue_id for h in hits if not getattr(h, "to_verify", False)}
        c["fp_calm_sure"] += len(sure - truth_alerts) if call.kind == CALM else 0
        c["tp_sure"] += len(sure & truth_alerts)
        c["to_verify"] += sum(bool(getattr(h, "to_verify", False)) for h in hits)
        s.missed[name] += [f"{call.call_id}:{x}" for x in sorted(truth_alerts - got)]
        s.false[name] += [f"{call.call_id}:{h.cue_id} «{h.evidence.text[h.evidence.char_start:h.evidence.char_end]}»"
                          for h in hits if h.cue_id not in truth_alerts]
    score_analysis(s, call, res["analysis"])
    s.analyzer_cpu_s.append(res.get("analyzer_cpu_s", 0.0))
    for name, analysis in res.get("analyses", {}).items():
        sub = s.more.setdefault(name, Score())
        sub.calls += 1
        sub.calm_calls += call.kind == CALM
        sub.fallbacks += "->" in analysis.analyzer
        score_analysis(sub, call, analysis)


def score_analysis(s: Score, call: Call, a: Any) -> None:
    """Facts, topics and codes of one call's analysis against its truth."""
    truth_facts = [fact_tuple(*f) for f in call.all_facts]
    got_facts = [fact_tuple(f.fact_type, f.key, f.value) for f in a.facts]
    s.facts["truth"] += len(truth_facts)
    s.facts["pred"] += len(got_facts)
    s.facts["tp_truth"] += sum(any(fact_match(t, g) for g in got_facts) for t in truth_facts)
    s.facts["tp_pred"] += sum(any(fact_match(t, g) for t in truth_facts) for g in got_facts)
    topics = set(a.topics)
    truth_topics = set(call.topics)
    if truth_topics:
        s.topic_acc.append(len(topics & truth_topics) / len(truth_topics))
    s.topic_pred["pred"] += len(topics)
    s.topic_pred["right"] += len(topics & truth_topics)
    # a call whose script talks about a catalogued topic and got none (a call about none, as the
    # CI subset's short pet call, rightly gets none)
    s.topics_empty += bool(truth_topics) and not topics
    codes = set(a.behavioral_codes) - IGNORED_CODES
    truth_codes = set(call.codes)
    s.codes["tp"] += len(codes & truth_codes)
    s.codes["truth"] += len(truth_codes)
    s.codes["pred"] += len(codes)
    s.codes["exact"] += codes == truth_codes


def ratio(a: float, b: float) -> float | None:
    return a / b if b else None


def summary(s: Score) -> dict[str, Any]:
    v = s.vad
    p, r = ratio(v["tp"], v["tp"] + v["fp"]), ratio(v["tp"], v["tp"] + v["fn"])
    out: dict[str, Any] = {
        "calls": s.calls, "calm_calls": s.calm_calls,
        "vad_frame_f1": (2 * p * r / (p + r)) if p and r else None,
        "wer_person": None if PERSON in s.scripted_legs else ratio(s.edits[PERSON], s.words[PERSON]),
        "wer_lupita": None if LUPITA in s.scripted_legs else ratio(s.edits[LUPITA], s.words[LUPITA]),
        "scripted_legs": sorted(s.scripted_legs),
        "name_recall": ratio(*s.names), "medication_recall": ratio(*s.meds),
        "empty_finals_on_voiced": ratio(s.voiced_empty, s.voiced) if s.voiced else None,
        "voiced_finals": s.voiced,
        "fact_precision": ratio(s.facts["tp_pred"], s.facts["pred"]),
        "fact_recall": ratio(s.facts["tp_truth"], s.facts["truth"]),
        "facts_truth": s.facts["truth"], "facts_pred": s.facts["pred"],
        "topic_accuracy": float(np.mean(s.topic_acc)) if s.topic_acc else None,
        "topic_precision": ratio(s.topic_pred["right"], s.topic_pred["pred"]),
        "topics_empty_calls": s.topics_empty,
        "code_precision": ratio(s.codes["tp"], s.codes["pred"]), "code_recall": ratio(s.codes["tp"], s.codes["truth"]),
        "code_exact_calls": ratio(s.codes["exact"], s.calls),
        "analyzer_cpu_s_p50": float(np.median(s.analyzer_cpu_s)) if s.analyzer_cpu_s else None,
        "analyzer_cpu_s_max": float(np.max(s.analyzer_cpu_s)) if s.analyzer_cpu_s else None,
        "alerts": {},
        "analyzers": {name: {k: v for k, v in summary(sub).items()
                             if k.startswith(("fact_", "facts_", "topic", "code_"))} | {"fallbacks": sub.fallbacks}
                      for name, sub in s.more.items()},
    }
    for name, c in s.alerts.items():
        out["alerts"][name] = {
            "recall": ratio(c["tp"], c["tp"] + c["fn"]), "expected": c["tp"] + c["fn"],
            "false_per_100_calls": 100 * c["fp"] / max(1, s.calls),
            "false_per_100_calm_calls": 100 * c["fp_calm"] / max(1, s.calm_calls),
            "recall_sure": ratio(c["tp_sure"], c["tp"] + c["fn"]),
            "false_sure_per_100_calm_calls": 100 * c["fp_calm_sure"] / max(1, s.calm_calls),
            "to_verify": c["to_verify"], "missed": s.missed[name], "false": s.false[name],
        }
    return out


# ------------------------------------------------------------------------------------------ running


def evaluate(calls: list[Call], *, models: Models | None = None, use_asr_cache: bool = False,
             lupita_asr: bool = True, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Both columns over ``calls``: ``baseline`` (the script's text) and ``audio`` (VAD → ASR)."""
    models = models or load_models()
    scores = {"baseline": Score(), "audio": Score()}
    cached = 0
    per_voice: dict[str, Counter] = defaultdict(Counter)
    t0 = time.perf_counter()
    for i, call in enumerate(calls):
        rendered = corpus.render(call)
        base_utts = script_utterances(rendered)
        score_call(scores["baseline"], call, understand(models, call.call_id, base_utts), utts=base_utts,
                   finals=None, rendered=rendered)
        finals, hit = transcribe_call(models, rendered, use_cache=use_asr_cache, lupita_asr=lupita_asr)
        cached += hit
        utts, words = asr_utterances(call, finals)
        score_call(scores["audio"], call, understand(models, call.call_id, utts, words), utts=utts, finals=finals,
                   rendered=rendered)
        e, w = word_edits(call.text(PERSON), " ".join(u.text for u in utts if u.leg == PERSON))
        per_voice[call.person_voice[0]]["edits"] += e
        per_voice[call.person_voice[0]]["words"] += w
        if progress:
            progress(f"{i + 1}/{len(calls)} {call.call_id} ({call.describe()}): {len(finals)} finals, "
                     f"{time.perf_counter() - t0:.0f} s")
    return {"baseline": summary(scores["baseline"]), "audio": summary(scores["audio"]), "asr_cached_calls": cached,
            "person_wer_by_voice": {v: c["edits"] / max(1, c["words"]) for v, c in sorted(per_voice.items())},
            "wall_s": time.perf_counter() - t0}


# ------------------------------------------------------------------ the real pipeline (--path pipeline)

# The worker's timing for a bench run: the stages' waits in seconds, not minutes (as the tests run it).
PIPELINE_WORKER_ENV = {
    "LUPITA_STAGES": "recorder,vad,transcriber,understanding",
    "LUPITA_KAFKA_SESSION_TIMEOUT_SECONDS": "10",
    "LUPITA_KAFKA_HEARTBEAT_SECONDS": "1",
    "LUPITA_KAFKA_REBALANCE_TIMEOUT_SECONDS": "10",
    "LUPITA_KAFKA_COMMIT_INTERVAL_SECONDS": "1",
    "LUPITA_TABLE_STANDBY_REPLICAS": "0",
    "LUPITA_RECORDER_GRACE_SECONDS": "2",
    "LUPITA_RECORDER_TICK_SECONDS": "0.25",
    "LUPITA_VAD_GRACE_SECONDS": "3",
    "LUPITA_VAD_TICK_SECONDS": "0.25",
    "LUPITA_UNDERSTANDING_RETRY_INITIAL_SECONDS": "1",
    "LUPITA_LOG_LEVEL": "WARNING",
}
PIPELINE_PHONE_BASE = 90_000  # corpus call k speaks from synthetic_phone(PIPELINE_PHONE_BASE + k)


class PipelineError(RuntimeError):
    """The real path could not run (the stack unreachable, the worker dead or late, a call refused)."""


class Pipeline:
    """The corpus through the real path: a ``lupita bridge`` child (gRPC, ``loadgen.client``) →
    Kafka (topics of this run's own prefix) → a ``lupita worker`` child with every stage (its own
    consumer group, data folder and Weaviate collections) → Postgres / Weaviate / S3; the results
    read back from the stores. Topics and collections are removed at the end; the Postgres rows
    and the locked WAVs stay, as the end-to-end test's do (call ids ``bench-und-<run>-<call>``)."""

    def __init__(self, workdir: Path, *, worker_env: dict[str, str] | None = None, log_dir: Path | None = None,
                 progress: Callable[[str], None] | None = None) -> None:
        self.run_id = os.urandom(4).hex()
        self.workdir = workdir
        self.log_dir = log_dir or workdir  # the bridge's and the worker's logs
        self.extra_env = dict(worker_env or {})
        self.progress = progress or (lambda m: None)
        self.prefix = f"bench-und-{self.run_id}."
        self.collections = (f"BenchUndConversation_{self.run_id}", f"BenchUndUtterance_{self.run_id}")
        self.worker: Any = None
        self.metrics_port = 0
        self.bridge: Any = None
        self.settings: Any = None
        self.db: Any = None

    def call_id(self, call: Call) -> str:
        return f"bench-und-{self.run_id}-{call.call_id}"

    def __enter__(self) -> "Pipeline":
        try:
            return self._start()
        except BaseException:
            self.__exit__(None, None, None)  # the children started so far, the run's topics
            raise

    def _start(self) -> "Pipeline":
        import subprocess

        import psycopg
        from loadgen.bridgeproc import BridgeProcess
        from lupita.cli import load_stack_env
        from lupita.topics import ensure_topics

        from stream_processor.settings import PipelineSettings

        load_stack_env()
        self.settings = PipelineSettings(topic_prefix=self.prefix, weaviate_conversation_collection=self.collections[0],
                                         weaviate_utterance_collection=self.collections[1])
        try:
            ensure_topics(self.settings)
            self.db = psycopg.connect(self.settings.postgres_dsn.get_secret_value(), autocommit=True)
        except Exception as exc:  # noqa: BLE001 - any failure to reach the stack says the same
            raise PipelineError(f"the local stack is not reachable ({type(exc).__name__}: {exc}); "
                                f"run `lupita stack up`") from None
        env = dict(os.environ, LUPITA_TOPIC_PREFIX=self.prefix)
        self.bridge = BridgeProcess(self.log_dir / f"bench-und-{self.run_id}-bridge.log", env=env).start()
        with socket_free_port() as port:
            self.metrics_port = port
        wenv = dict(env, **PIPELINE_WORKER_ENV, LUPITA_APP_ID=f"bench-und-{self.run_id}",
                    LUPITA_METRICS_PORT=str(self.metrics_port), LUPITA_METRICS_HOST="127.0.0.1",
                    LUPITA_DATA_DIR=str(self.workdir / "data"), LUPITA_INSTANCE_NAME="understanding-bench",
                    LUPITA_ASR_THREADS=str(min(2, os.cpu_count() or 1)),
                    LUPITA_WEAVIATE_CONVERSATION_COLLECTION=self.collections[0],
                    LUPITA_WEAVIATE_UTTERANCE_COLLECTION=self.collections[1], **self.extra_env)
        self.worker_log = self.log_dir / f"bench-und-{self.run_id}-worker.log"
        self._log = open(self.worker_log, "wb")
        self.worker = subprocess.Popen([sys.executable, "-m", "stream_processor"], env=wenv,
                                       cwd=Path(__file__).resolve().parents[1], stdout=self._log,
                                       stderr=subprocess.STDOUT)
        self._wait("the worker to be ready", self._ready, timeout=240)
        return self

    def _alive(self) -> None:
        if self.worker.poll() is not None:
            tail = self.worker_log.read_text(errors="replace")[-3000:]
            raise PipelineError(f"the worker exited with {self.worker.returncode}:\n{tail}")

    def _ready(self) -> bool:
        import urllib.request

        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/readyz", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def _wait(self, what: str, cond: Callable[[], Any], *, timeout: float, interval: float = 0.5) -> Any:
        """Poll ``cond`` until it is truthy (a deadline, the worker alive), return its value."""
        deadline = time.monotonic() + timeout
        while True:
            self._alive()
            got = cond()
            if got:
                return got
            if time.monotonic() > deadline:
                raise PipelineError(f"{what}: not within {timeout:.0f} s (worker log {self.worker_log})")
            time.sleep(interval)

    def send(self, rendered: corpus.Rendered, index: int) -> str:
        """One call through the bridge (as fast as its flow control allows); its call id."""
        import asyncio

        from loadgen.client import stream_call
        from loadgen.runner import synthetic_phone
        from loadgen.settings import LoadgenSettings
        from lupita.v1 import audio_pb2

        call_id = self.call_id(rendered.call)
        res = asyncio.run(stream_call(self.bridge.target, LoadgenSettings().first_token, call_id, rendered.stereo,
                                      RATE, audio_pb2.CODEC_PCM16, speed=0, consent=True,
                                      phone=synthetic_phone(PIPELINE_PHONE_BASE + index), timeout_s=300))
        if not res.accepted or res.status != "OK" or res.frames_acked < res.frames_total:
            raise PipelineError(f"{call_id}: the bridge did not take the call: {res.status} {res.details} "
                               f"({res.frames_acked}/{res.frames_total} frames acked; errors {res.errors})")
        return call_id

    def wait_processed(self, call_ids: list[str], timeout: float) -> None:
        def done() -> bool:
            n = self.db.execute("SELECT count(*) FROM companion_calls WHERE call_id = ANY(%s) AND processed_at IS NOT NULL",
                                (call_ids,)).fetchone()[0]
            return n == len(call_ids)

        self._wait(f"{len(call_ids)} calls analysed", done, timeout=timeout, interval=1.0)

    def finals(self, call_ids: list[str]) -> dict[str, list[Final]]:
        """Every final transcript event of the calls, from the run's ``transcripts`` topic."""
        from kafka import KafkaConsumer, TopicPartition
        from lupita.topics import TRANSCRIPTS
        from lupita.v1 import events_pb2

        from stream_processor.records import LEG_NAMES

        topic = self.settings.topic(TRANSCRIPTS)
        consumer = KafkaConsumer(bootstrap_servers=self.settings.kafka_bootstrap, enable_auto_commit=False,
                                 consumer_timeout_ms=200, client_id="lupita-bench-understanding")
        try:
            parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
            consumer.assign(parts)
            consumer.seek_to_beginning(*parts)
            end = consumer.end_offsets(parts)
            want = {c.encode() for c in call_ids}
            out: dict[str, dict[tuple[str, int], Final]] = {c: {} for c in call_ids}
            deadline = time.monotonic() + 120
            while any(consumer.position(tp) < end[tp] for tp in parts):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{topic} not read to its end in 120 s")
                for batch in consumer.poll(timeout_ms=300, max_records=5000).values():
                    for r in batch:
                        if r.key not in want:
                            continue
                        ev = events_pb2.TranscriptEvent.FromString(r.value)
                        if ev.is_partial or ev.leg_complete:
                            continue
                        conf = ev.confidence if ev.HasField("confidence") else 1.0
                        out[ev.call_id][(LEG_NAMES[ev.leg], int(ev.seq))] = Final(
                            LEG_NAMES[ev.leg], int(ev.seq), max(ev.segment_start_us, 0) / 1e6,
                            max(ev.segment_end_us, 0) / 1e6, ev.text, float(conf), r.value)
        finally:
            consumer.close()
        return {c: sorted(f.values(), key=lambda f: (f.leg, f.seq)) for c, f in out.items()}

    def read_back(self, call_id: str) -> tuple[dict[str, Any], list[Any]]:
        """(``understand``'s result shape, the stored utterances) of one call, from Postgres."""
        from types import SimpleNamespace

        from stream_processor.contracts import EvidenceSpan, Utterance

        row = self.db.execute("SELECT topics, behavioral_codes_triggered FROM companion_calls WHERE call_id = %s",
                              (call_id,)).fetchone()
        utts = [Utterance(call_id, leg, seq, float(a), float(b), text, 1.0 if c is None else float(c))
                for leg, seq, a, b, text, c in self.db.execute(
                    "SELECT leg, seq, start_s, end_s, text, confidence FROM call_utterances WHERE call_id = %s "
                    "ORDER BY end_s, leg, seq", (call_id,)).fetchall()]
        facts = [SimpleNamespace(fact_type=t, key=k, value=v) for t, k, v in self.db.execute(
            "SELECT fact_type, fact_key, fact_value FROM user_facts WHERE source_call_id = %s", (call_id,)).fetchall()]
        alerts = []
        for cue, sev, ev, tv, why in self.db.execute(
                "SELECT cue_id, severity, evidence, to_verify, verification FROM call_alerts WHERE call_id = %s",
                (call_id,)).fetchall():
            span = EvidenceSpan(leg=ev["leg"], seq=int(ev["seq"]), start_s=float(ev["start_s"]), end_s=float(ev["end_s"]),
                                text=ev["text"], char_start=int(ev["char_start"]), char_end=int(ev["char_end"]))
            alerts.append(SimpleNamespace(cue_id=cue, severity=sev, evidence=span, to_verify=tv, verification=why))
        analysis = SimpleNamespace(facts=facts, topics=list(row[0] or []), behavioral_codes=list(row[1] or []),
                                   analyzer="worker")
        return {"alerts": {"worker (stored)": alerts}, "analysis": analysis, "analyses": {}}, utts

    def worker_cpu_s(self) -> float:
        stat = Path(f"/proc/{self.worker.pid}/stat").read_text()
        f = stat[stat.rindex(")") + 2:].split()
        return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")

    def __exit__(self, *exc: Any) -> None:
        import signal
        import subprocess

        if self.worker is not None and self.worker.poll() is None:
            self.worker.send_signal(signal.SIGTERM)
            try:
                self.worker.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.worker.kill()
                self.worker.wait(timeout=10)
        if self.bridge is not None:
            self.bridge.stop()
        if getattr(self, "_log", None) is not None:
            self._log.close()
        if self.db is not None:
            self.db.close()
        if self.settings is not None:
            try:
                _drop_run_topics_and_collections(self.settings, self.prefix, self.collections)
            except Exception as exc:  # noqa: BLE001 - cleanup must not hide the run's own error
                print(f"warning: the run's topics ({self.prefix}*) or Weaviate collections {self.collections} "
                      f"were not all deleted: {type(exc).__name__}: {exc}", file=sys.stderr)


class socket_free_port:
    """A free TCP port on 127.0.0.1 (``with socket_free_port() as port``)."""

    def __enter__(self) -> int:
        import socket

        self._s = socket.socket()
        self._s.bind(("127.0.0.1", 0))
        return self._s.getsockname()[1]

    def __exit__(self, *exc: Any) -> None:
        self._s.close()


def _drop_run_topics_and_collections(settings: Any, prefix: str, collections: tuple[str, ...]) -> None:
    import weaviate

    from lupita.topics import delete_prefixed

    delete_prefixed(settings, prefix, "lupita-bench-understanding")
    client = weaviate.connect_to_custom(
        http_host=settings.weaviate_host, http_port=settings.weaviate_http_port, http_secure=False,
        grpc_host=settings.weaviate_host, grpc_port=settings.weaviate_grpc_port, grpc_secure=False)
    try:
        for name in collections:
            client.collections.delete(name)
    finally:
        client.close()


def evaluate_pipeline(calls: list[Call], *, models: Models | None = None, workdir: Path,
                      worker_env: dict[str, str] | None = None, log_dir: Path | None = None, cores: bool = True,
                      progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Three columns over ``calls``: ``baseline`` (the script's text through the cores),
    ``audio`` (the cores on the ASR cache: VAD → ASR in this process, as ``--path core``; left
    empty with ``cores=False``) and ``pipeline`` (bridge → Kafka → worker → stores, read back),
    scored alike."""
    models = models or load_models()
    say = progress or (lambda m: None)
    scores = {"baseline": Score(), "audio": Score(), "pipeline": Score()}
    cached = 0
    t0 = time.perf_counter()
    rendered = [corpus.render(c) for c in calls]
    with Pipeline(workdir, worker_env=worker_env, log_dir=log_dir, progress=say) as pipe:
        say(f"worker ready ({time.perf_counter() - t0:.0f} s); topics {pipe.prefix}*")
        cpu0 = pipe.worker_cpu_s()
        t_send = time.perf_counter()
        ids = []
        for k, r in enumerate(rendered):
            ids.append(pipe.send(r, k))
            say(f"sent {k + 1}/{len(calls)} {ids[-1]} ({time.perf_counter() - t0:.0f} s)")
        # meanwhile: the same calls through the cores (transcripts from the ASR cache)
        for call, r in zip(calls, rendered):
            base_utts = script_utterances(r)
            score_call(scores["baseline"], call, understand(models, call.call_id, base_utts), utts=base_utts,
                       finals=None, rendered=r)
            if not cores:
                continue
            finals, hit = transcribe_call(models, r, use_cache=True)
            cached += hit
            utts, words = asr_utterances(call, finals)
            score_call(scores["audio"], call, understand(models, call.call_id, utts, words), utts=utts,
                       finals=finals, rendered=r)
        say(f"cores done ({time.perf_counter() - t0:.0f} s); waiting for the worker")
        pipe.wait_processed(ids, timeout=300 + 120 * len(ids))
        pipeline_s = time.perf_counter() - t_send
        cpu = pipe.worker_cpu_s() - cpu0
        finals_of = pipe.finals(ids)
        stored: dict[str, Any] = {}
        for call, r, cid in zip(calls, rendered, ids):
            res, utts = pipe.read_back(cid)
            score_call(scores["pipeline"], call, res, utts=utts, finals=finals_of[cid], rendered=r)
            stored[call.call_id] = {"finals": finals_of[cid], "utterances": utts, "analysis": res["analysis"],
                                    "alerts": res["alerts"]["worker (stored)"]}
    return {"baseline": summary(scores["baseline"]), "audio": summary(scores["audio"]),
            "pipeline": summary(scores["pipeline"]), "asr_cached_calls": cached,
            "pipeline_wall_s": pipeline_s, "pipeline_worker_cpu_s": cpu,
            "audio_s": float(sum(len(r.stereo) for r in rendered) / RATE),
            "person_wer_by_voice": {}, "wall_s": time.perf_counter() - t0,
            "_stored": stored}  # per corpus call: what the worker stored (not written to --json)


def _fmt(x: Any, pct: bool = False) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.1%}" if pct else f"{x:.3f}"
    return str(x)


# The report's rows common to both paths: (stage, label, key, as a percentage).
QUALITY_ROWS = [
    ("VAD", "frame F1 (10 ms, both legs)", "vad_frame_f1", False),
    ("ASR", "WER person leg", "wer_person", True),
    ("ASR", "WER Lupita leg", "wer_lupita", True),
    ("ASR", "name recall (person leg)", "name_recall", False),
    ("ASR", "medication recall (person leg)", "medication_recall", False),
    ("ASR", "empty finals on voiced segments", "empty_finals_on_voiced", True),
    ("analyzer", "fact precision (type, key, value)", "fact_precision", False),
    ("analyzer", "fact recall (type, key, value)", "fact_recall", False),
    ("analyzer", "topic accuracy (share of the call's topics found)", "topic_accuracy", False),
    ("analyzer", "topic precision", "topic_precision", False),
    ("analyzer", "calls with no topic", "topics_empty_calls", False),
    ("analyzer", "code precision", "code_precision", False),
    ("analyzer", "code recall", "code_recall", False),
]


def print_report(r: dict[str, Any], path: str) -> None:
    b, a = r["baseline"], r["audio"]
    rows = QUALITY_ROWS + [
        ("analyzer", "code accuracy (calls with the exact code set)", "code_exact_calls", False),
        ("analyzer", "analyzer CPU s per call, p50 (thread time)", "analyzer_cpu_s_p50", False),
        ("analyzer", "analyzer CPU s per call, max", "analyzer_cpu_s_max", False),
    ]
    print(f"\npath: {path}; {a['calls']} calls ({a['calls'] - a['calm_calls']} with an alert cue, "
          f"{a['calm_calls']} calm); ASR from cache for {r['asr_cached_calls']} calls; {r['wall_s']:.0f} s")
    head = f"{'stage':<9} {'metric':<50} {'clean text':>11} {'audio':>9}"
    print(head)
    print("-" * len(head))
    for stage, label, k, pct in rows:
        print(f"{stage:<9} {label:<50} {_fmt(b[k], pct):>11} {_fmt(a[k], pct):>9}")
    for name in a["alerts"]:
        ab, aa = b["alerts"][name], a["alerts"][name]
        labels = (f"[{name}] recall ({aa['expected']} expected)", f"[{name}] false alerts / 100 calls",
                  f"[{name}] false alerts / 100 calm calls", f"[{name}] raised as to_verify")
        sure = (f"[{name}] recall, sure alerts only", f"[{name}] false sure alerts / 100 calm calls")
        print(f"{'alerts':<9} {labels[0]:<50} {_fmt(ab['recall']):>11} {_fmt(aa['recall']):>9}")
        print(f"{'alerts':<9} {labels[1]:<50} {ab['false_per_100_calls']:>11.1f} {aa['false_per_100_calls']:>9.1f}")
        print(f"{'alerts':<9} {labels[2]:<50} {ab['false_per_100_calm_calls']:>11.1f} "
              f"{aa['false_per_100_calm_calls']:>9.1f}")
        if aa["to_verify"] or ab["to_verify"]:
            print(f"{'alerts':<9} {labels[3]:<50} {ab['to_verify']:>11} {aa['to_verify']:>9}")
            print(f"{'alerts':<9} {sure[0]:<50} {_fmt(ab['recall_sure']):>11} {_fmt(aa['recall_sure']):>9}")
            print(f"{'alerts':<9} {sure[1]:<50} {ab['false_sure_per_100_calm_calls']:>11.1f} "
                  f"{aa['false_sure_per_100_calm_calls']:>9.1f}")
    for name in a.get("analyzers", {}):
        ab, aa = b["analyzers"][name], a["analyzers"][name]
        for label, k in (("fact precision", "fact_precision"), ("fact recall", "fact_recall"),
                         ("topic accuracy", "topic_accuracy"), ("calls with no topic", "topics_empty_calls"),
                         ("code recall", "code_recall"), ("fallbacks to local", "fallbacks")):
            print(f"{'analyzer':<9} {f'[{name}] {label}':<50} {_fmt(ab[k]):>11} {_fmt(aa[k]):>9}")
    print("\nperson-leg WER by voice: " + ", ".join(f"{v} {w:.0%}" for v, w in r["person_wer_by_voice"].items()))
    for name in a["alerts"]:
        for col, x in (("clean text", b["alerts"][name]), ("audio", a["alerts"][name])):
            if x["missed"]:
                print(f"[{name}] {col}: missed {', '.join(x['missed'])}")
            if x["false"]:
                print(f"[{name}] {col}: false {'; '.join(x['false'])}")


PIPELINE_DETECTOR = "word probabilities"  # the cores' detector that gets what the worker's gets


def print_pipeline_report(r: dict[str, Any]) -> None:
    b, a, w = r["baseline"], r["audio"], r["pipeline"]
    rows = QUALITY_ROWS + [("analyzer", "facts found", "facts_pred", False)]
    print(f"\npath: pipeline (bridge -> Kafka -> worker -> Postgres/Weaviate/S3, read back) beside the cores on the "
          f"same calls; {w['calls']} calls ({w['calls'] - w['calm_calls']} with an alert cue, {w['calm_calls']} calm); "
          f"core ASR from cache for {r['asr_cached_calls']} calls")
    print(f"pipeline: {r['audio_s']:.0f} s of calls sent at bridge speed, all analysed {r['pipeline_wall_s']:.0f} s "
          f"after the first was sent; worker CPU {r['pipeline_worker_cpu_s']:.0f} s")
    head = f"{'stage':<9} {'metric':<50} {'clean text':>11} {'cores':>9} {'pipeline':>9}"
    print(head)
    print("-" * len(head))
    for stage, label, k, pct in rows:
        print(f"{stage:<9} {label:<50} {_fmt(b[k], pct):>11} {_fmt(a[k], pct):>9} {_fmt(w[k], pct):>9}")
    ab, aa, aw = (x["alerts"][n] for x, n in ((b, PIPELINE_DETECTOR), (a, PIPELINE_DETECTOR), (w, "worker (stored)")))
    label = f"recall ({aw['expected']} expected)"
    print(f"{'alerts':<9} {label:<50} {_fmt(ab['recall']):>11} {_fmt(aa['recall']):>9} {_fmt(aw['recall']):>9}")
    for label, k in (("false alerts / 100 calls", "false_per_100_calls"),
                     ("false alerts / 100 calm calls", "false_per_100_calm_calls")):
        print(f"{'alerts':<9} {label:<50} {ab[k]:>11.1f} {aa[k]:>9.1f} {aw[k]:>9.1f}")
    print(f"{'alerts':<9} {'raised as to_verify':<50} {ab['to_verify']:>11} {aa['to_verify']:>9} {aw['to_verify']:>9}")
    print(f"{'alerts':<9} {'false sure alerts / 100 calm calls':<50} {ab['false_sure_per_100_calm_calls']:>11.1f} "
          f"{aa['false_sure_per_100_calm_calls']:>9.1f} {aw['false_sure_per_100_calm_calls']:>9.1f}")
    print("(alerts: the cores' column is the detector given the words' probabilities, as the worker's is)")
    for col, x in (("cores", aa), ("pipeline", aw)):
        if x["missed"]:
            print(f"{col}: missed {', '.join(x['missed'])}")
        if x["false"]:
            print(f"{col}: false {'; '.join(x['false'])}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--calls", type=int, default=40, help="how many calls of the corpus (the first N)")
    p.add_argument("--path", choices=("core", "pipeline"), default="core",
                   help="core: the replay's cores in this process (VadCore -> transcriber -> CallUnderstanding -> "
                        "analyzer); pipeline: also through a real bridge -> Kafka -> worker -> stores, read back from "
                        "the stores and scored beside the cores on the same calls (slow: use --calls 6-10)")
    p.add_argument("--worker-env", action="append", default=[], metavar="LUPITA_KEY=VALUE",
                   help="--path pipeline: an extra setting of the worker (repeatable)")
    p.add_argument("--asr-cache", action="store_true", help="reuse cached transcripts of the same audio and settings")
    p.add_argument("--lupita-leg", choices=("asr", "script"), default="asr",
                   help="script: Lupita's segments (found by the VAD) carry the script's words instead of being "
                        "transcribed: half the Whisper time; her leg's WER is then not measured")
    p.add_argument("--reverse", action="store_true",
                   help="last call first (a second process filling the ASR cache from the other end)")
    p.add_argument("--asr-key", default=None,
                   help="with --asr-cache: reuse the transcripts cached under this ASR settings key (an earlier "
                        "run's, printed at its start) instead of today's settings' key; the output says so")
    p.add_argument("--claude-standin", action="store_true",
                   help="also run the Claude path (LUPITA_ANALYZER_BACKEND=anthropic through the official client) "
                        "against a local server speaking the Messages wire format, on the same utterances")
    p.add_argument("--json", action="store_true", help=f"also write the results to {RESULTS_DIR}/")
    args = p.parse_args(argv)
    import logging

    logging.disable(logging.WARNING)
    calls = corpus.build_corpus(args.calls)
    if args.reverse:
        calls.reverse()
    print(f"understanding evaluation: {len(calls)} scripted Spanish calls, espeak-ng voices "
          f"{sorted({c.person_voice[0] for c in calls} | {c.lupita_voice[0] for c in calls})}, 8 kHz telephone band")
    if args.path == "core":
        print("path: core (the replay's cores in one process: VadCore -> transcriber -> "
              "CallUnderstanding.on_final/AlertDetector -> analyzer; no Kafka, no stores)")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores shared; "
          f"load average {os.getloadavg()[0]:.1f}")
    t = time.perf_counter()
    models = load_models(claude_standin=args.claude_standin)
    print(f"models loaded in {time.perf_counter() - t:.1f} s; ASR settings key {models.asr_key}")
    if args.asr_key and args.asr_key != models.asr_key:
        print(f"transcripts: reused from ASR settings key {args.asr_key} (an earlier run's settings, not today's "
              f"{models.asr_key}); calls without them are transcribed with today's settings")
        models.save_key, models.asr_key = models.asr_key, args.asr_key
    if args.lupita_leg == "script":
        print("Lupita's leg: VAD only; her segments carry the script's words (not transcribed)")
    say = lambda m: print("  " + m, file=sys.stderr, flush=True)  # noqa: E731
    if args.path == "pipeline":
        import tempfile

        env = {}
        for item in args.worker_env:
            k, eq, v = item.partition("=")
            if not k.startswith("LUPITA_") or not eq:
                p.error(f"--worker-env {item!r}: expected LUPITA_KEY=VALUE")
            env[k] = v
        with tempfile.TemporaryDirectory(prefix="lupita-und-bench-") as tmp:
            try:
                r = evaluate_pipeline(calls, models=models, workdir=Path(tmp), worker_env=env, progress=say)
            except PipelineError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 2
        print_pipeline_report(r)
    else:
        r = evaluate(calls, models=models, use_asr_cache=args.asr_cache, lupita_asr=args.lupita_leg == "asr",
                     progress=say)
        print_report(r, args.path)
    if args.json:
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        out = RESULTS_DIR / f"understanding-{time.strftime('%Y%m%d-%H%M%S')}.json"
        r = {k: v for k, v in r.items() if not k.startswith("_")}
        out.write_text(json.dumps({"path": args.path, "loadavg": os.getloadavg(), **r}, indent=2, default=str))
        print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
