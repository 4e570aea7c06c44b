"""ASR benchmark: real-time factor of the transcriber backends, per speech segment, same run.

The audio is the simulator's Spanish check-in call (``loadgen.synth.DEFAULT_SCRIPT``, both
voices, espeak-ng + sox telephone band at 8 kHz): each turn is one segment, as the VAD stage
would cut it, with 0.3 s of silence around it. Each segment is transcribed on its own, which is
how the transcriber stage runs (Whisper always encodes a 30 s window, so short segments cost
more per second of audio than one long file would).

Local backend (faster-whisper, packaged Whisper base, int8 on the CPU): every combination of
``--threads`` and ``--beams`` for finals, plus partial hypotheses (beam 1, no timestamps). For
each: RTF by wall clock (latency per second of audio) and by process CPU time (cores busy per
second of audio; its inverse is how many real-time legs of speech one core keeps up with), and
the word error rate against the script (normalised, accent-insensitive) as a sanity check that
a faster setting is not a broken one. Model load time is printed once.

Packing and batching (``--pack SECONDS``, ``--batch N``, local only, beam = the largest of
``--beams``, the first of ``--threads``): besides one decode per segment, the same segments as
``packed`` (the consecutive turns of one leg wait together and share windows of at most SECONDS,
``transcribe_many``), ``batched`` (N segments, of any leg, decoded in one CTranslate2 call,
``transcribe_batch``) and ``packed+batched`` (the legs' packed windows, N at a time), all in the
same run, so their CPU per segment and WER compare with the per-segment row. Their latency is the
whole call's wall time, given to each of its segments. ``bench/asr_encode.py`` measures the same
modes on the many-voice corpus.

Cloud backends (``--backend openai|deepgram --url URL``): wall-clock RTF and latency per
segment against that URL (API keys from LUPITA_OPENAI_API_KEY / LUPITA_DEEPGRAM_API_KEY).

    .venv/bin/python bench/asr.py                               # local: threads 1 2 x beam 1 5 (~3-4 min)
    .venv/bin/python bench/asr.py --threads 1 --beams 5 --repeat 2 --json
    .venv/bin/python bench/asr.py --threads 1 --beams 5 --pack 30 --batch 8 --no-partial
    .venv/bin/python bench/asr.py --backend deepgram --url http://127.0.0.1:8080
    .venv/bin/python bench/asr.py --device cuda --compute-type float16   # on a GPU machine
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from loadgen.synth import DEFAULT_SCRIPT, DEFAULT_VOICES, synthesize_utterance  # noqa: E402
from stream_processor.models.asr.base import Transcriber  # noqa: E402
from stream_processor.models.asr.guards import normalize_text  # noqa: E402

RESULTS_DIR = Path(__file__).resolve().parent / "results"
PAD_S = 0.3


@dataclass
class Row:
    backend: str
    mode: str  # final | partial
    threads: int
    beam: int
    audio_s: float
    wall_s: float
    cpu_s: float
    wer: float
    p50_latency_s: float
    p95_latency_s: float

    @property
    def rtf_wall(self) -> float:
        return self.wall_s / self.audio_s

    @property
    def rtf_cpu(self) -> float:
        return self.cpu_s / self.audio_s


def segments(rate: int) -> list[tuple[str, np.ndarray]]:
    pad = np.zeros(int(PAD_S * rate), np.int16)
    out = []
    for turn in DEFAULT_SCRIPT:
        speech = synthesize_utterance(turn.text, rate, DEFAULT_VOICES[turn.leg], cache_dir=RESULTS_DIR / ".synth")
        out.append((turn.text, np.concatenate([pad, speech, pad]).astype(np.float32) / 32768))
    return out


def wer(ref: str, hyp: str) -> tuple[int, int]:
    """(word edits, reference words) after normalisation."""
    r, h = normalize_text(ref).split(), normalize_text(hyp).split()
    d = list(range(len(h) + 1))
    for i, rw in enumerate(r, 1):
        prev, d[0] = d[0], i
        for j, hw in enumerate(h, 1):
            prev, d[j] = d[j], min(d[j] + 1, d[j - 1] + 1, prev + (rw != hw))
    return d[len(h)], len(r)


def run(t: Transcriber, segs: list[tuple[str, np.ndarray]], rate: int, *, partial: bool, repeat: int,
        label: tuple[str, str, int, int]) -> Row:
    edits = words = 0
    latencies: list[float] = []
    audio_s = 0.0
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for _ in range(repeat):
        for ref, pcm in segs:
            t0 = time.perf_counter()
            result = t.transcribe_partial(pcm, rate) if partial else t.transcribe(pcm, rate)
            latencies.append(time.perf_counter() - t0)
            e, n = wer(ref, result.text)
            edits, words, audio_s = edits + e, words + n, audio_s + len(pcm) / rate
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    q = statistics.quantiles(latencies, n=20) if len(latencies) > 1 else latencies * 19
    return Row(*label, audio_s=audio_s, wall_s=wall, cpu_s=cpu, wer=edits / max(1, words),
               p50_latency_s=statistics.median(latencies), p95_latency_s=q[18])


def run_grouped(t: Transcriber, segs: list[tuple[str, np.ndarray]], legs: list[str], rate: int, *, pack: bool,
                batch: int, repeat: int, label: tuple[str, str, int, int]) -> Row:
    """Several segments per call: ``pack`` — a leg's consecutive turns are one request; ``batch`` —
    that many requests per ``transcribe_batch`` call (1: one request per call)."""
    requests: list[list[int]] = []
    for k, leg in enumerate(legs):
        if pack and requests and legs[requests[-1][-1]] == leg:
            requests[-1].append(k)
        else:
            requests.append([k])
    edits = words = 0
    latencies: list[float] = []
    audio_s = 0.0
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for _ in range(repeat):
        for i in range(0, len(requests), max(1, batch)):
            chunk = requests[i:i + max(1, batch)]
            t0 = time.perf_counter()
            out = t.transcribe_batch([[(segs[k][1], rate) for k in req] for req in chunk])
            took = time.perf_counter() - t0
            for req, results in zip(chunk, out):
                for k, result in zip(req, results):
                    latencies.append(took)
                    e, n = wer(segs[k][0], result.text)
                    edits, words, audio_s = edits + e, words + n, audio_s + len(segs[k][1]) / rate
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    q = statistics.quantiles(latencies, n=20) if len(latencies) > 1 else latencies * 19
    return Row(*label, audio_s=audio_s, wall_s=wall, cpu_s=cpu, wer=edits / max(1, words),
               p50_latency_s=statistics.median(latencies), p95_latency_s=q[18])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backend", default="local", choices=("local", "openai", "deepgram"))
    p.add_argument("--url", help="base URL of a cloud backend (OpenAI: .../v1)")
    p.add_argument("--model", help="cloud model (default: the settings' whisper-1 / nova-2)")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--beams", type=int, nargs="+", default=[1, 5])
    p.add_argument("--no-partial", action="store_true", help="skip the partial-hypothesis rows")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--compute-type", default="int8")
    p.add_argument("--rate", type=int, default=8000, choices=(8000, 16000))
    p.add_argument("--repeat", type=int, default=1, help="passes over the call per configuration")
    p.add_argument("--pack", type=float, default=0.0, help="also a packed row: windows of at most this many s")
    p.add_argument("--batch", type=int, default=0, help="also batched rows: this many windows per decode call")
    p.add_argument("--json", action="store_true", help=f"also write the results to {RESULTS_DIR}/")
    args = p.parse_args(argv)

    segs = segments(args.rate)
    audio_s = sum(len(x) for _, x in segs) / args.rate
    cpus = os.cpu_count()
    print(f"ASR real-time factor, {len(segs)} segments of synthetic Spanish telephone speech, "
          f"{audio_s:.1f} s at {args.rate} Hz (each segment transcribed on its own)")
    print(f"machine: {platform.processor() or platform.machine()}, {cpus} cores shared with other users; "
          f"load average {os.getloadavg()[0]:.1f}; device {args.device}")
    rows: list[Row] = []
    load_s = None
    if args.backend == "local":
        import ctranslate2
        import faster_whisper

        from stream_processor.models.asr.whisper_local import WhisperLocal, WhisperOptions

        print(f"faster-whisper {faster_whisper.__version__}, ctranslate2 {ctranslate2.__version__}, "
              f"Whisper base (packaged), compute {args.compute_type}, language es, VAD filter on")
        for threads in args.threads:
            models = {}
            for beam in args.beams:
                t0 = time.perf_counter()
                model = WhisperLocal(threads=threads, device=args.device, compute_type=args.compute_type,
                                     options=WhisperOptions(beam_size=beam))
                load_s = load_s or time.perf_counter() - t0
                models[beam] = model
                model.transcribe(segs[0][1], args.rate)  # warm-up (first call allocates)
                rows.append(run(model, segs, args.rate, partial=False, repeat=args.repeat,
                                label=("local", "final", threads, beam)))
                print(f"  done: threads {threads} beam {beam}", file=sys.stderr)
            if not args.no_partial:
                model = next(iter(models.values()))
                rows.append(run(model, segs, args.rate, partial=True, repeat=args.repeat,
                                label=("local", "partial", threads, model.options.partial_beam_size)))
        beam, threads = max(args.beams), args.threads[0]
        legs = [turn.leg for turn in DEFAULT_SCRIPT]
        grouped = ([("packed", args.pack, 1)] if args.pack else []) + \
            ([("batched", 0.0, args.batch)] if args.batch > 1 else []) + \
            ([("pack+bat", args.pack, args.batch)] if args.pack and args.batch > 1 else [])
        for mode, pack_s, batch in grouped:
            model = WhisperLocal(threads=threads, device=args.device, compute_type=args.compute_type,
                                 options=WhisperOptions(beam_size=beam, pack_max_seconds=pack_s,
                                                        batch_max_windows=max(1, batch)))
            model.transcribe_batch([[(x, args.rate)] for _, x in segs[:2]])  # warm-up
            rows.append(run_grouped(model, segs, legs, args.rate, pack=bool(pack_s), batch=batch,
                                    repeat=args.repeat, label=("local", mode, threads, beam)))
            print(f"  done: {mode}", file=sys.stderr)
    else:
        from pydantic import SecretStr  # noqa: F401 - settings carry the keys

        from stream_processor.models.asr.factory import build_cloud
        from stream_processor.models.asr.settings import AsrSettings

        overrides: dict[str, object] = {"asr_backend": args.backend, "asr_fallback": "none"}
        if args.url:
            overrides["openai_base_url" if args.backend == "openai" else "deepgram_base_url"] = args.url
        if args.model:
            overrides["asr_openai_model" if args.backend == "openai" else "asr_deepgram_model"] = args.model
        try:
            settings = AsrSettings(**overrides)
        except Exception as exc:  # noqa: BLE001 - a missing key is the usual reason
            print(f"cannot configure {args.backend}: {exc}", file=sys.stderr)
            return 2
        t = build_cloud(settings)
        rows.append(run(t, segs, args.rate, partial=False, repeat=args.repeat,
                        label=(args.backend, "final", 0, 0)))
        t.close()

    print()
    head = (f"{'backend':<9} {'mode':<8} {'thr':>3} {'beam':>4} {'audio s':>8} {'wall s':>7} {'cpu s':>7} "
            f"{'RTF wall':>8} {'RTF cpu':>8} {'RT legs/core':>12} {'p50 s':>6} {'p95 s':>6} {'WER':>6}")
    print(head)
    print("-" * len(head))
    for r in rows:
        legs = f"{1 / r.rtf_cpu:12.1f}" if r.backend == "local" else f"{'-':>12}"
        print(f"{r.backend:<9} {r.mode:<8} {r.threads:>3} {r.beam:>4} {r.audio_s:8.1f} {r.wall_s:7.1f} "
              f"{r.cpu_s:7.1f} {r.rtf_wall:8.3f} {r.rtf_cpu:8.3f} {legs} {r.p50_latency_s:6.2f} "
              f"{r.p95_latency_s:6.2f} {r.wer:6.1%}")
    print()
    if load_s is not None:
        print(f"model load (weights joined in memory + CTranslate2 int8 conversion): {load_s:.1f} s")
    print("RTF wall = wall time / audio time (latency per second of audio); RTF cpu = process CPU time /")
    print("audio time (cores busy); RT legs/core = 1 / RTF cpu, counting speech only (a leg speaks part")
    print("of the time). p50/p95 = latency per segment. WER against the script, normalised.")
    if args.json:
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        out = RESULTS_DIR / f"asr-{time.strftime('%Y%m%d-%H%M%S')}-{args.backend}.json"
        out.write_text(json.dumps({
            "machine": {"processor": platform.processor() or platform.machine(), "cpus": cpus,
                        "loadavg": os.getloadavg()},
            "rate": args.rate, "device": args.device, "compute_type": args.compute_type, "load_s": load_s,
            "rows": [{**asdict(r), "rtf_wall": r.rtf_wall, "rtf_cpu": r.rtf_cpu} for r in rows],
        }, indent=2))
        print(f"results: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
