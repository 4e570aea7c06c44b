"""Encoder window: Whisper's full 30 s encoder window vs the window trimmed to the segment (+ margin),
on real segments of the understanding corpus, every mode in the same run, segment by segment.

Segments: the person-leg VAD segments of the corpus calls (``bench/corpus``, 8 kHz telephone audio,
10 espeak-ng voices, noise, mu-law), as the transcriber stage gets them: their times come from the
transcript cache ``bench/understanding.py`` wrote (``~/.cache/lupita/understanding-corpus/asr``, the
worker's VAD settings), the audio from the cached rendering. Truth of a segment: the person's
scripted pieces whose speech overlaps it most (a piece no segment overlaps is a VAD miss, counted
and left out of both modes alike).

Modes (``--modes``): ``full`` (what runs today: features padded to 3,000 frames) and
``trimmed:MARGIN[:MIN_WINDOW]`` (``encoder_window="trimmed"``, margin and minimum window in
seconds). One ``WhisperLocal`` per mode, one CTranslate2 thread each (fair CPU), beam 5 finals with
word timings as the transcriber runs them; the modes take turns on each segment so load from the
shared machine falls on all of them alike. Per mode: CPU-s per segment (process CPU time, p50 and
mean), RTF by CPU and by wall clock, WER overall and per voice, the empty-transcript rate on voiced
segments, segments worse / better than ``full``, and word-timestamp sanity (every word inside the
segment, monotonic).

    .venv/bin/python bench/asr_encode.py                                   # 40 calls, full + 3 margins
    .venv/bin/python bench/asr_encode.py --calls 8 --modes full trimmed:1.0 --json
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
from corpus import PERSON, RATE, word_edits  # noqa: E402

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


def parse_mode(spec: str) -> WhisperOptions:
    if spec == "full":
        return WhisperOptions(encoder_window="full")
    kind, *nums = spec.split(":")
    if kind != "trimmed" or not 1 <= len(nums) <= 2:
        raise SystemExit(f"mode {spec!r}: expected full or trimmed:MARGIN[:MIN_WINDOW]")
    return WhisperOptions(encoder_window="trimmed", encoder_margin_s=float(nums[0]),
                          encoder_min_window_s=float(nums[1]) if len(nums) > 1 else 0.0)


def cached_segments(call_id: str) -> list[tuple[float, float]] | None:
    """The person-leg segment times of one call from the newest transcript cache file."""
    files = sorted((corpus.cache_dir() / "asr").glob(f"{call_id}-*.json"), key=lambda p: p.stat().st_mtime)
    if not files:
        return None
    finals = json.loads(files[-1].read_text())
    return [(f["start_s"], f["end_s"]) for f in finals if f["leg"] == PERSON]


def load_segments(calls: list[corpus.Call]) -> tuple[list[Segment], int, list[str]]:
    out: list[Segment] = []
    missed = 0
    skipped: list[str] = []
    for call in calls:
        times = cached_segments(call.call_id)
        if times is None:
            skipped.append(call.call_id)
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
                out.append(Segment(call.call_id, call.person_voice[0], s, e, audio, " ".join(texts.get(k, []))))
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
    p.add_argument("--max-segments", type=int, default=0, help="at most this many segments, spread over the calls")
    p.add_argument("--modes", nargs="+", default=list(DEFAULT_MODES))
    p.add_argument("--beam", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--compute-type", default="int8")
    p.add_argument("--json", action="store_true", help=f"also write the results to {RESULTS_DIR}/")
    args = p.parse_args(argv)
    import logging

    logging.disable(logging.WARNING)

    calls = corpus.build_corpus(args.calls)
    segs, missed, skipped = load_segments(calls)
    if args.max_segments and len(segs) > args.max_segments:
        idx = np.linspace(0, len(segs) - 1, args.max_segments).round().astype(int)
        segs = [segs[i] for i in sorted(set(idx.tolist()))]
    if not segs:
        print("no segments: run bench/understanding.py once to fill the transcript cache", file=sys.stderr)
        return 1
    durations = [s.audio.size / RATE for s in segs]
    print(f"encoder window benchmark: {len(segs)} person-leg VAD segments of {len(calls) - len(skipped)} corpus calls "
          f"({sum(durations):.0f} s, {min(durations):.1f}-{max(durations):.1f} s, median {statistics.median(durations):.1f} s;"
          f" {missed} scripted pieces missed by the VAD; calls without cached segments: {skipped or 'none'})")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores shared; load average "
          f"{os.getloadavg()[0]:.1f}; {args.device} {args.compute_type}, {args.threads} thread(s), beam {args.beam}")

    files = load_model_files()
    models: dict[str, WhisperLocal] = {}
    for spec in args.modes:
        o = parse_mode(spec)
        o = WhisperOptions(**{**o.__dict__, "beam_size": args.beam})
        models[spec] = WhisperLocal(threads=args.threads, device=args.device, compute_type=args.compute_type,
                                    options=o, files=files)
    # warm-up (first-call allocations) outside the measurement
    for m in models.values():
        m.transcribe(segs[0].audio, RATE)

    stats = {spec: Stats() for spec in models}
    t0 = time.perf_counter()
    for i, seg in enumerate(segs):
        duration = seg.audio.size / RATE
        order = list(models) if i % 2 == 0 else list(reversed(models))  # alternate who goes first
        for spec in order:
            st = stats[spec]
            c, w = time.process_time(), time.perf_counter()
            r = models[spec].transcribe(seg.audio, RATE)
            st.cpu.append(time.process_time() - c)
            st.wall.append(time.perf_counter() - w)
            st.audio_s += duration
            e, n = word_edits(seg.truth, r.text)
            st.edits += e
            st.words += n
            st.per_segment_edits.append(e)
            st.per_voice[seg.voice][0] += e
            st.per_voice[seg.voice][1] += n
            if n:
                st.voiced += 1
                st.empty += r.is_empty
            check_words(r, duration, st)
        if (i + 1) % 10 == 0:
            print(f"  {i + 1}/{len(segs)} segments, {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)

    base = stats.get("full")
    rows = []
    for spec, st in stats.items():
        worse = better = 0
        if base is not None and spec != "full":
            worse = sum(a > b for a, b in zip(st.per_segment_edits, base.per_segment_edits))
            better = sum(a < b for a, b in zip(st.per_segment_edits, base.per_segment_edits))
        rows.append({
            "mode": spec, "segments": len(st.cpu), "audio_s": round(st.audio_s, 1),
            "cpu_p50_s": statistics.median(st.cpu), "cpu_mean_s": statistics.fmean(st.cpu),
            "cpu_p95_s": float(np.percentile(st.cpu, 95)),
            "rtf_cpu": sum(st.cpu) / st.audio_s, "rtf_wall": sum(st.wall) / st.audio_s,
            "wer": st.edits / max(1, st.words), "empty_rate": st.empty / max(1, st.voiced), "voiced": st.voiced,
            "worse_than_full": worse, "better_than_full": better,
            "words": st.n_words, "words_outside_segment": st.words_outside, "non_monotonic": st.non_monotonic,
            "wer_by_voice": {v: e / max(1, n) for v, (e, n) in sorted(st.per_voice.items())},
            "per_segment": [{"call": g.call_id, "start_s": g.start_s, "cpu_s": round(c, 3), "edits": e}
                            for g, c, e in zip(segs, st.cpu, st.per_segment_edits)],
        })

    print(f"\n{'mode':<16} {'CPU-s/seg p50':>13} {'mean':>6} {'p95':>6} {'x full':>7} {'RTF cpu':>8} {'RTF wall':>8} "
          f"{'WER':>6} {'empty':>6} {'worse/better':>12} {'words out':>10}")
    full_mean = rows[0]["cpu_mean_s"] if rows and rows[0]["mode"] == "full" else None
    for r in rows:
        speed = f"{full_mean / r['cpu_mean_s']:.2f}" if full_mean else "-"
        wb = f"{r['worse_than_full']}/{r['better_than_full']}" if r["mode"] != "full" else "-"
        print(f"{r['mode']:<16} {r['cpu_p50_s']:>13.3f} {r['cpu_mean_s']:>6.3f} {r['cpu_p95_s']:>6.3f} {speed:>7} "
              f"{r['rtf_cpu']:>8.3f} {r['rtf_wall']:>8.3f} {pct(r['wer']):>6} {pct(r['empty_rate']):>6} {wb:>12} "
              f"{r['words_outside_segment']:>4}/{r['words']:<5}")
    voices = sorted({v for r in rows for v in r["wer_by_voice"]})
    print("\nWER by person voice:")
    print(f"{'voice':<12} " + " ".join(f"{r['mode']:>12}" for r in rows))
    for v in voices:
        print(f"{v:<12} " + " ".join(f"{pct(r['wer_by_voice'].get(v, 0.0)):>12}" for r in rows))
    print(f"{'words':<12} " + " ".join(f"{stats[r['mode']].words:>12}" for r in rows))
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
