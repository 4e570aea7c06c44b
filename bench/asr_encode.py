"""Decoding modes of the local Whisper on real segments of the understanding corpus, every mode in
the same run, segment by segment: the encoder window (Whisper's full 30 s window vs the window
trimmed to the segment + margin) and the temperature-fallback ladder (temperatures, samples per
temperature, thresholds), the cost that remains once the window is trimmed.

Segments: the person-leg VAD segments of the corpus calls (``bench/corpus``, 8 kHz telephone audio,
10 espeak-ng voices, noise, mu-law), as the transcriber stage gets them: their times come from the
transcript cache ``bench/understanding.py`` wrote (``~/.cache/lupita/understanding-corpus/asr``, the
worker's VAD settings), the audio from the cached rendering. Truth of a segment: the person's
scripted pieces whose speech overlaps it most (a piece no segment overlaps is a VAD miss, counted
and left out of both modes alike). ``--segments pieces`` (or ``auto`` when a call has no cached
transcripts) takes each person piece's own span (+ 0.3 s each side) from the rendering instead:
no VAD run needed.

Modes (``--modes``): ``full`` (what runs today: features padded to 3,000 frames) and
``trimmed:MARGIN[:MIN_WINDOW]`` (``encoder_window="trimmed"``, margin and minimum window in
seconds), each optionally followed by ``,KEY=VALUE`` decoding options: ``temps=0+0.4+0.8``
(fallback ladder), ``best_of=N`` (samples per fallback temperature), ``pack=SECONDS`` (the segments
of a call wait together and are packed into windows of at most that length, ``transcribe_many``;
a window's CPU is shared by its segments by audio length), ``vocab=none|facts|lexicon|both`` (the
call's own facts as the person's memory, the health lexicon, both: name recall is printed), ``lp=-1.0`` (log-probability
threshold), ``cr=2.4`` (compression-ratio threshold), ``vad=0|1`` (faster-whisper's own VAD
filter), ``retry=SECONDS`` (an empty final with that much Silero speech is decoded again; 0 = never,
as before #11 §4), ``batch=N`` (N waiting windows decoded in one batched CTranslate2 call,
``transcribe_batch``: without packing N consecutive segments of any call, with packing N calls'
packed requests; the batch's CPU is shared by its segments by audio length), ``guard=0|1`` and
``glp=-0.8`` (trimmed window: re-decode a doubtful trimmed final with the full window, and the
mean log-probability below which it is doubtful), ``beam=N`` (this mode's beam size instead of
``--beam``), e.g. ``trimmed:1.0,temps=0+0.6,best_of=2``. A malformed mode exits with its reason.
Segments decoded twice (window guard, batch re-decode) are counted. Unset options are the
``WhisperOptions`` defaults of the code being measured (the default ladder is now ``temps=0+0.5,
best_of=2``; Whisper's own: ``temps=0+0.2+0.4+0.6+0.8+1.0,best_of=5``). The decode passes per segment (one per
temperature tried) are counted, so the share of the fallback in the cost shows.
One ``WhisperLocal`` per mode, one CTranslate2 thread each (fair CPU), beam 5 finals with word
timings as the transcriber runs them; the modes take turns on each segment so load from the
shared machine falls on all of them alike. Per mode: CPU-s per segment (process CPU time, p50 and
mean), RTF by CPU and by wall clock, WER overall and per voice, the empty-transcript rate on voiced
segments, segments worse / better than ``full``, and word-timestamp sanity (every word inside the
segment, monotonic).

    .venv/bin/python bench/asr_encode.py                                   # 40 calls, full + 3 margins
    .venv/bin/python bench/asr_encode.py --calls 8 --modes full trimmed:1.0 --json
    .venv/bin/python bench/asr_encode.py --segments pieces --calls 12 --max-segments 30 \\
        --modes full full,temps=0 trimmed:1.0,temps=0+0.6,best_of=2
    .venv/bin/python bench/asr_encode.py --device cuda --compute-type float16   # on a GPU machine
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import corpus  # noqa: E402  (bench/corpus)
from corpus import LUPITA, PERSON, RATE, word_edits  # noqa: E402

from stream_processor.models.asr.vocabulary import HEALTH_LEXICON_ES_MX as HEALTH_LEXICON  # noqa: E402
from stream_processor.models.asr.whisper_local import WhisperLocal, WhisperOptions, load_model_files  # noqa: E402

RESULTS_DIR = Path(__file__).resolve().parent / "results"
DEFAULT_MODES = ("full", "trimmed:1.0", "trimmed:0.5", "trimmed:2.0")
EPS_S = 0.011  # word times are rounded to 10 ms


@dataclass
class Segment:
    call_id: str
    voice: str
    start_s: float
    end_s: float
    audio: np.ndarray  # float32, RATE
    truth: str
    call: corpus.Call | None = None


@dataclass
class Stats:
    cpu: list[float] = field(default_factory=list)
    wall: list[float] = field(default_factory=list)
    audio_s: float = 0.0
    edits: int = 0
    words: int = 0
    voiced: int = 0
    empty: int = 0
    n_words: int = 0
    words_outside: int = 0
    non_monotonic: int = 0
    per_voice: dict[str, list[int]] = field(default_factory=lambda: defaultdict(lambda: [0, 0]))
    per_segment_edits: list[int] = field(default_factory=list)
    passes: list[int] = field(default_factory=list)  # decoder passes (windows x temperatures tried) per segment
    fallbacks: list[int] = field(default_factory=list)  # of which at a fallback temperature
    empties: list[str] = field(default_factory=list)  # voiced segments with no text, and why
    terms_said: int = 0  # names and medication words in the truth
    terms_heard: int = 0  # of those, in the transcript
    vocab_leaks: int = 0  # vocabulary terms in the transcript that the truth does not say
    gap_words: int = 0  # packed modes: words dropped because they fell between two segments
    redecoded: int = 0  # segments decoded a second time (full_window guard, batch_redecode)


_OPTION_KEYS = {"batch": "batch_max_windows", "guard": "encoder_guard", "glp": "encoder_guard_logprob",
                "retry": "empty_retry_min_speech_s", "pack": "pack_max_seconds", "vocab": "", "temps": "temperatures", "best_of": "best_of", "lp": "log_prob_threshold",
                "cr": "compression_ratio_threshold", "vad": "vad_filter", "nst": "no_speech_threshold",
                "beam": "beam_size", "flp": "fallback_log_prob_threshold"}


def parse_vocab(spec: str) -> str:
    """The ``vocab=`` option of a mode: none (default), facts, lexicon or both."""
    for item in spec.split(",")[1:]:
        key, _, value = item.partition("=")
        if key == "vocab":
            if value not in ("none", "facts", "lexicon", "both"):
                raise SystemExit(f"mode {spec!r}: vocab must be none, facts, lexicon or both")
            return value
    return "none"


def segment_vocabulary(seg: Segment, kind: str) -> tuple[str, ...]:
    """What the worker would give the decoder for this segment's call: the call's own facts as the
    person's memory (a returning caller), the lexicon, both, or nothing."""
    from stream_processor.models.asr.vocabulary import call_vocabulary

    if kind == "none":
        return ()
    facts = list(seg.call.facts) if seg.call is not None and kind in ("facts", "both") else []
    return call_vocabulary(facts, lexicon=() if kind == "facts" else HEALTH_LEXICON)


def said_terms(seg: Segment) -> list[str]:
    """The names and medication words of the call that this segment's truth says (folded)."""
    if seg.call is None:
        return []
    truth = f" {corpus.fold(seg.truth)} "
    return [t for t in {corpus.fold(x) for x in [*seg.call.names, *seg.call.meds]} if t and f" {t} " in truth]


def parse_mode(spec: str) -> WhisperOptions:
    """One ``--modes`` entry as ``WhisperOptions``; a malformed entry exits with its reason."""
    window, *extra = spec.split(",")
    try:
        if window == "full":
            kw: dict = {"encoder_window": "full"}
        else:
            kind, *nums = window.split(":")
            if kind != "trimmed" or not 1 <= len(nums) <= 2:
                raise SystemExit(f"mode {spec!r}: expected full or trimmed:MARGIN[:MIN_WINDOW][,KEY=VALUE...]")
            kw = {"encoder_window": "trimmed", "encoder_margin_s": float(nums[0]),
                  "encoder_min_window_s": float(nums[1]) if len(nums) > 1 else 0.0}
        for item in extra:
            key, _, value = item.partition("=")
            if key not in _OPTION_KEYS or not value:
                raise SystemExit(f"mode {spec!r}: option {item!r} is not one of {sorted(_OPTION_KEYS)}=VALUE")
            if key == "temps":
                kw["temperatures"] = tuple(float(t) for t in value.split("+"))
            elif key in ("vad", "guard"):
                kw[_OPTION_KEYS[key]] = value not in ("0", "false", "off")
            elif key in ("batch", "beam", "best_of"):
                kw[_OPTION_KEYS[key]] = int(value)
            elif key != "vocab":
                kw[_OPTION_KEYS[key]] = float(value)
        return WhisperOptions(**kw)
    except ValueError as exc:  # a number that is not one, or out of its range (WhisperOptions says which)
        raise SystemExit(f"mode {spec!r}: {exc}") from None


def count_passes(model: WhisperLocal) -> list[int]:
    """Count the decoder passes of ``model``: ``[passes, fallback passes]``, one pass per window
    (Whisper may decode a segment in several seek steps) and per fallback temperature tried; the
    fallback passes are those at a temperature above the first."""
    inner = model._model.generate_with_fallback
    counter = [0, 0]

    def wrapped(encoder_output, prompt, tokenizer, options):
        out = inner(encoder_output, prompt, tokenizer, options)
        temps = list(options.temperatures)
        tried = temps.index(out[2]) + 1 if out[2] in temps else len(temps)
        counter[0] += tried
        counter[1] += tried - 1
        return out

    model._model.generate_with_fallback = wrapped
    return counter


def cached_segments(call_id: str) -> list[tuple[float, float]] | None:
    """The person-leg segment times of one call from the newest transcript cache file."""
    files = sorted((corpus.cache_dir() / "asr").glob(f"{call_id}-*.json"), key=lambda p: p.stat().st_mtime)
    if not files:
        return None
    finals = json.loads(files[-1].read_text())
    return [(f["start_s"], f["end_s"]) for f in finals if f["leg"] == PERSON]


PIECE_PAD_S = 0.3


def piece_segments(call: corpus.Call, who: str = PERSON) -> list[Segment]:
    """One leg's scripted pieces as segments (the person's, channel 1, or Lupita's, channel 0):
    each piece's span + PIECE_PAD_S each side."""
    rendered = corpus.render(call)
    leg = rendered.stereo[:, 1 if who == PERSON else 0].astype(np.float32) / 32768.0
    voice = (call.person_voice if who == PERSON else call.lupita_voice)[0]
    out = []
    for p, (a, b) in zip(call.pieces, rendered.piece_times):
        if p.leg != who or b <= a:
            continue
        s, e = max(0.0, a - PIECE_PAD_S), min(leg.size / RATE, b + PIECE_PAD_S)
        out.append(Segment(call.call_id, voice, s, e, leg[int(s * RATE): int(e * RATE)], p.text, call))
    return out


def load_segments(calls: list[corpus.Call], source: str = "auto", who: str = PERSON
                  ) -> tuple[list[Segment], int, list[str]]:
    if who != PERSON:  # the transcript cache holds the person's segment times only
        return [seg for call in calls for seg in piece_segments(call, who)], 0, []
    out: list[Segment] = []
    missed = 0
    skipped: list[str] = []
    for call in calls:
        times = cached_segments(call.call_id) if source != "pieces" else None
        if times is None:
            if source == "vad":
                skipped.append(call.call_id)
            else:
                out.extend(piece_segments(call))
            continue
        rendered = corpus.render(call)
        leg = rendered.stereo[:, 1].astype(np.float32) / 32768.0
        texts: dict[int, list[str]] = defaultdict(list)
        for p, (a, b) in zip(call.pieces, rendered.piece_times):
            if p.leg != PERSON:
                continue
            overlaps = [min(b, e) - max(a, s) for s, e in times]
            k = int(np.argmax(overlaps)) if overlaps else -1
            if k < 0 or overlaps[k] <= 0:
                missed += 1
                continue
            texts[k].append(p.text)
        for k, (s, e) in enumerate(times):
            audio = leg[int(s * RATE): int(e * RATE)]
            if audio.size:
                out.append(Segment(call.call_id, call.person_voice[0], s, e, audio, " ".join(texts.get(k, [])), call))
    return out, missed, skipped


def check_words(result, duration: float, st: Stats) -> None:
    words = result.words
    st.n_words += len(words)
    st.words_outside += sum(1 for w in words if not (-EPS_S <= w.start <= w.end <= duration + EPS_S))
    st.non_monotonic += sum(1 for a, b in zip(words, words[1:]) if b.start < a.start - EPS_S)


def pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--calls", type=int, default=40, help="the first N calls of the corpus")
    p.add_argument("--call-ids", default="", help="comma-separated: only these calls of the first --calls")
    p.add_argument("--terms-only", action="store_true",
                   help="only segments whose truth says a name or medication word of the call (name recall)")
    p.add_argument("--skip", type=int, default=0, help="leave out the first N of those calls (a second sample)")
    p.add_argument("--max-segments", type=int, default=0, help="at most this many segments, spread over the calls")
    p.add_argument("--modes", nargs="+", default=list(DEFAULT_MODES))
    p.add_argument("--beam", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--compute-type", default="int8")
    p.add_argument("--leg", choices=(PERSON, LUPITA), default=PERSON,
                   help="whose segments: the person's (default) or Lupita's (her scripted pieces, as --segments pieces)")
    p.add_argument("--segments", choices=("auto", "vad", "pieces"), default="auto",
                   help="vad: the cached VAD segments; pieces: the scripted pieces; auto: vad where cached")
    p.add_argument("--json", action="store_true", help=f"also write the results to {RESULTS_DIR}/")
    args = p.parse_args(argv)
    import logging

    logging.disable(logging.WARNING)

    calls = corpus.build_corpus(args.calls)[args.skip:]
    if args.call_ids:
        calls = [c for c in calls if c.call_id in set(args.call_ids.split(","))]
    segs, missed, skipped = load_segments(calls, args.segments, args.leg)
    if args.terms_only:
        segs = [s for s in segs if said_terms(s)]
    if args.max_segments and len(segs) > args.max_segments:
        idx = np.linspace(0, len(segs) - 1, args.max_segments).round().astype(int)
        segs = [segs[i] for i in sorted(set(idx.tolist()))]
    if not segs:
        print("no segments: run bench/understanding.py once to fill the transcript cache, or use --segments pieces",
              file=sys.stderr)
        return 1
    durations = [s.audio.size / RATE for s in segs]
    print(f"decoding modes benchmark: {len(segs)} {args.leg}-leg segments ({'pieces' if args.leg == LUPITA else args.segments}) of {len(calls) - len(skipped)} corpus calls "
          f"({sum(durations):.0f} s, {min(durations):.1f}-{max(durations):.1f} s, median {statistics.median(durations):.1f} s;"
          f" {missed} scripted pieces missed by the VAD; calls without cached segments: {skipped or 'none'})")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores shared; load average "
          f"{os.getloadavg()[0]:.1f} (1 min) {os.getloadavg()[1]:.1f} (5 min); {args.device} {args.compute_type}, {args.threads} thread(s), beam {args.beam}")

    files = load_model_files()
    models: dict[str, WhisperLocal] = {}
    passes: dict[str, list[int]] = {}
    for spec in args.modes:
        o = parse_mode(spec)
        if ",beam=" not in spec:  # a mode's own beam= wins over --beam
            o = WhisperOptions(**{**o.__dict__, "beam_size": args.beam})
        models[spec] = WhisperLocal(threads=args.threads, device=args.device, compute_type=args.compute_type,
                                    options=o, files=files)
        passes[spec] = count_passes(models[spec])
    # warm-up (first-call allocations) outside the measurement
    for m in models.values():
        m.transcribe(segs[0].audio, RATE)
        if m.options.batch_max_windows > 1:
            m.transcribe_batch([[(s.audio, RATE)] for s in segs[:2]])

    stats = {spec: Stats() for spec in models}
    t0 = time.perf_counter()
    def account(spec: str, seg: Segment, r, vocab: tuple[str, ...], cpu: float, wall: float,
                n_passes: int, n_fallbacks: int) -> None:
        st = stats[spec]
        duration = seg.audio.size / RATE
        st.passes.append(n_passes)
        st.fallbacks.append(n_fallbacks)
        st.cpu.append(cpu)
        st.wall.append(wall)
        st.audio_s += duration
        said, heard = said_terms(seg), f" {corpus.fold(r.text)} "
        st.terms_said += len(said)
        st.terms_heard += sum(f" {t} " in heard for t in said)
        truth = f" {corpus.fold(seg.truth)} "
        st.vocab_leaks += sum(1 for t in {corpus.fold(v) for v in vocab}
                              if t and f" {t} " in heard and f" {t} " not in truth)
        e, n = word_edits(seg.truth, r.text)
        st.edits += e
        st.words += n
        st.per_segment_edits.append(e)
        st.per_voice[seg.voice][0] += e
        st.per_voice[seg.voice][1] += n
        if n:
            st.voiced += 1
            st.empty += r.is_empty
            if r.is_empty:
                st.empties.append(f"{seg.call_id}@{seg.start_s:.1f}s ({duration:.1f} s, "
                                  f"{n_passes} passes): {','.join(r.guard_actions) or 'no segment decoded'}")
        st.gap_words += r.guard_actions.count("pack_gap_word")
        st.redecoded += any(a in ("full_window", "batch_redecode") for a in r.guard_actions)
        check_words(r, duration, st)

    single = [m for m in models if not models[m].options.pack_max_seconds and models[m].options.batch_max_windows <= 1]
    packed = [m for m in models if m not in single]
    for i, seg in enumerate(segs):
        order = single if i % 2 == 0 else list(reversed(single))  # alternate who goes first
        for spec in order:
            c, w, (n0, f0) = time.process_time(), time.perf_counter(), list(passes[spec])
            vocab = segment_vocabulary(seg, parse_vocab(spec))
            r = models[spec].transcribe(seg.audio, RATE, vocabulary=vocab)
            account(spec, seg, r, vocab, time.process_time() - c, time.perf_counter() - w,
                    passes[spec][0] - n0, passes[spec][1] - f0)
        if (i + 1) % 10 == 0:
            print(f"  {i + 1}/{len(segs)} segments, {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    # packed modes: the segments of one call wait together (a backlog) and go to transcribe_many;
    # a window's CPU is shared by its segments in proportion to their audio
    groups: list[list[Segment]] = []
    for seg in segs:
        if groups and groups[-1][0].call_id == seg.call_id:
            groups[-1].append(seg)
        else:
            groups.append([seg])
    # batched modes (batch=N): N waiting windows decoded in one call; without packing each segment is
    # one window (N consecutive segments, across calls: a backlog of several calls), with packing
    # each call's group is one request (packed within the call only), N requests at a time. The
    # batch's CPU is shared by its segments in proportion to their audio. Vocabulary modes batch
    # per call (a batch has one vocabulary).
    for spec in packed:
        o = models[spec].options
        if o.batch_max_windows <= 1:
            units = [[group] for group in groups]
        elif o.pack_max_seconds:
            units = [groups[k:k + o.batch_max_windows] for k in range(0, len(groups), o.batch_max_windows)]
        else:
            units = [[[s] for s in segs[k:k + o.batch_max_windows]] for k in range(0, len(segs), o.batch_max_windows)]
        if parse_vocab(spec) != "none":  # one vocabulary per batch: never across calls
            units = [[r] for unit in units for r in unit] if o.batch_max_windows <= 1 else \
                [[[s] for s in group] if not o.pack_max_seconds else [group] for group in groups]
        for unit in units:
            vocab = segment_vocabulary(unit[0][0], parse_vocab(spec))
            c, w, (n0, f0) = time.process_time(), time.perf_counter(), list(passes[spec])
            results = models[spec].transcribe_batch([[(g.audio, RATE) for g in req] for req in unit], vocabulary=vocab)
            cpu, wall = time.process_time() - c, time.perf_counter() - w
            flat = [g for req in unit for g in req]
            total = sum(g.audio.size for g in flat)
            for g, r in zip(flat, [r for rs in results for r in rs]):
                share = g.audio.size / total
                account(spec, g, r, vocab, cpu * share, wall * share, passes[spec][0] - n0 if g is flat[0] else 0,
                        passes[spec][1] - f0 if g is flat[0] else 0)
    segs_by_mode = {m: segs if m in single else [g for group in groups for g in group] for m in models}

    base = stats.get("full")
    rows = []
    for spec, st in stats.items():
        worse = better = 0
        if base is not None and spec != "full":
            # the same segments in the same order (packed modes keep the segments' order)
            worse = sum(a > b for a, b in zip(st.per_segment_edits, base.per_segment_edits))
            better = sum(a < b for a, b in zip(st.per_segment_edits, base.per_segment_edits))
        rows.append({
            "mode": spec, "segments": len(st.cpu), "audio_s": round(st.audio_s, 1),
            "cpu_p50_s": statistics.median(st.cpu), "cpu_mean_s": statistics.fmean(st.cpu),
            "cpu_p95_s": float(np.percentile(st.cpu, 95)),
            "rtf_cpu": sum(st.cpu) / st.audio_s, "rtf_wall": sum(st.wall) / st.audio_s,
            "wer": st.edits / max(1, st.words), "empty_rate": st.empty / max(1, st.voiced), "voiced": st.voiced,
            "passes_mean": statistics.fmean(st.passes), "fallback_segments": sum(n > 0 for n in st.fallbacks),
            "fallback_passes_mean": statistics.fmean(st.fallbacks),
            "empties": st.empties,
            "name_recall": st.terms_heard / max(1, st.terms_said), "terms_said": st.terms_said,
            "vocab_leaks": st.vocab_leaks, "gap_words_dropped": st.gap_words, "redecoded": st.redecoded,
            "worse_than_full": worse, "better_than_full": better,
            "words": st.n_words, "words_outside_segment": st.words_outside, "non_monotonic": st.non_monotonic,
            "wer_by_voice": {v: e / max(1, n) for v, (e, n) in sorted(st.per_voice.items())},
            "per_segment": [{"call": g.call_id, "start_s": g.start_s, "cpu_s": round(c, 3), "edits": e, "passes": n}
                            for g, c, e, n in zip(segs_by_mode[spec], st.cpu, st.per_segment_edits, st.passes)],
        })

    width = max(16, *(len(r["mode"]) for r in rows))
    print(f"\n{'mode':<{width}} {'CPU-s/seg p50':>13} {'mean':>6} {'p95':>6} {'x full':>7} {'RTF cpu':>8} {'RTF wall':>8} "
          f"{'WER':>6} {'empty':>6} {'worse/better':>12} {'words out':>10} {'passes':>6} {'fallb.':>6}")
    full_mean = rows[0]["cpu_mean_s"] if rows and rows[0]["mode"] == "full" else None
    for r in rows:
        speed = f"{full_mean / r['cpu_mean_s']:.2f}" if full_mean else "-"
        wb = f"{r['worse_than_full']}/{r['better_than_full']}" if r["mode"] != "full" else "-"
        print(f"{r['mode']:<{width}} {r['cpu_p50_s']:>13.3f} {r['cpu_mean_s']:>6.3f} {r['cpu_p95_s']:>6.3f} {speed:>7} "
              f"{r['rtf_cpu']:>8.3f} {r['rtf_wall']:>8.3f} {pct(r['wer']):>6} {pct(r['empty_rate']):>6} {wb:>12} "
              f"{r['words_outside_segment']:>4}/{r['words']:<5} {r['passes_mean']:>6.2f} {r['fallback_segments']:>6}")
    voices = sorted({v for r in rows for v in r["wer_by_voice"]})
    print("\nWER by person voice:")
    print(f"{'voice':<12} " + " ".join(f"{r['mode']:>12}" for r in rows))
    for v in voices:
        print(f"{v:<12} " + " ".join(f"{pct(r['wer_by_voice'].get(v, 0.0)):>12}" for r in rows))
    print(f"{'words':<12} " + " ".join(f"{stats[r['mode']].words:>12}" for r in rows))
    print("\nnames and medication words heard (recall), and vocabulary terms written that were not said:")
    for r in rows:
        print(f"  {r['mode']:<{width}} {pct(r['name_recall'])} of {r['terms_said']}; {r['vocab_leaks']} not said"
              + (f"; {r['gap_words_dropped']} words dropped in gaps" if models[r['mode']].options.pack_max_seconds else "")
              + (f"; {r['redecoded']} segments decoded twice (window guard / batch re-decode)" if r["redecoded"] else ""))
    for r in rows:
        for e in r["empties"]:
            print(f"empty on a voiced segment, {r['mode']}: {e}")
    print("\nnon-monotonic word pairs: " + ", ".join(f"{r['mode']} {r['non_monotonic']}" for r in rows)
          + f"; wall {time.perf_counter() - t0:.0f} s")
    if args.json:
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        out = RESULTS_DIR / f"asr-encode-{time.strftime('%Y%m%d-%H%M%S')}.json"
        out.write_text(json.dumps({"args": vars(args), "segments": len(segs), "missed_pieces": missed,
                                   "loadavg": os.getloadavg(), "rows": rows}, indent=2))
        print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
