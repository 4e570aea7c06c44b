"""Embedder and alert-scan benchmark: CPU cost per utterance of the two per-segment text stages.

Corpus: the simulator's Spanish check-in call (``loadgen.synth.DEFAULT_SCRIPT``) plus a set of
alert and calm utterances (falls, chest pain, negated cues, false friends), repeated to
``--utterances`` items. Everything runs in this process, one after another.

Alerts (``stream_processor.stages.understanding.alerts``): catalogue load + compile time; then per utterance, the full
``AlertDetector.scan`` against the baseline of the same run, ``normalise`` alone (the text pass
every scan starts with), so the table shows what the regex work costs on top of it.

Local embeddings (``stream_processor.models.embeddings.local_use``, USE multilingual v3 in numpy): model
load time; ms per utterance when each utterance is embedded alone (batch 1, how the stage runs
when segments trickle in) against batches of ``--batch`` (how it runs with a backlog or in a
replay), for each ``--threads`` value; and ``call_vector`` over one call's utterances.

    .venv/bin/python bench/embed.py                      # ~20 s
    .venv/bin/python bench/embed.py --threads 1 2 --utterances 400 --json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from loadgen.synth import DEFAULT_SCRIPT
from stream_processor.stages.understanding.alerts import AlertDetector, load_catalogue, normalise
from stream_processor.models.embeddings.base import call_vector
from stream_processor.contracts import Utterance

RESULTS_DIR = Path(__file__).resolve().parent / "results"

EXTRA = [
    "Ay, Lupita, hoy en la mañana me caí en el baño y no me puedo levantar del piso.",
    "No sé... me aprieta el pecho y me falta el aire desde hace un rato.",
    "No me caí, gracias a Dios, pero se me doblaron las piernas en la cocina.",
    "Hace dos años me caí en el mercado, pero ya estoy muy bien.",
    "La vecina me cae muy bien, siempre me trae tamales los domingos.",
    "Me pegó la gripa la semana pasada, pero ya me siento mejor, gracias.",
    "Hice caldo de pollo con arroz y tortillas hechas a mano para mis nietos.",
    "Ya no quiero vivir, Lupita, para qué sigo aquí si nadie me visita.",
    "No sé dónde estoy, esta no es mi casa, no reconozco nada.",
    "Hoy hizo un calor tremendo, pero en la tarde llovió un poquito y se refrescó.",
    "Mi yerno me grita y no me dan de comer hasta la noche.",
    "Sí.",
    "Fíjese que mi hijo Miguel dice que a lo mejor viene en diciembre con toda la familia, "
    "y yo ya le estoy preparando el cuarto de arriba para que se queden aquí conmigo unas semanas.",
]


def corpus(n: int) -> list[str]:
    base = [t.text for t in DEFAULT_SCRIPT] + EXTRA
    return [base[i % len(base)] for i in range(n)]


def timed_each(fn, items) -> list[float]:
    out = []
    for x in items:
        t0 = time.perf_counter()
        fn(x)
        out.append(time.perf_counter() - t0)
    return out


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def bench_alerts(texts: list[str], repeat: int) -> dict:
    t0 = time.perf_counter()
    detector = AlertDetector(load_catalogue())
    load_s = time.perf_counter() - t0
    utterances = [Utterance("bench", "person", i, 0.0, 1.0, t) for i, t in enumerate(texts)]
    for u in utterances[:50]:  # warm the regex and char caches
        detector.scan(u)
    norm_t: list[float] = []
    scan_t: list[float] = []
    for _ in range(repeat):
        norm_t += timed_each(normalise, texts)
        scan_t += timed_each(detector.scan, utterances)
    hits = sum(len(detector.scan(u)) for u in utterances)
    chars = statistics.mean(len(t) for t in texts)
    return {
        "cues": len(detector.catalogue.cues),
        "patterns": sum(len(c.patterns) for c in detector.catalogue.cues),
        "load_ms": load_s * 1e3,
        "mean_chars": chars,
        "normalise_us_p50": pct(norm_t, 0.5) * 1e6,
        "normalise_us_p99": pct(norm_t, 0.99) * 1e6,
        "scan_us_p50": pct(scan_t, 0.5) * 1e6,
        "scan_us_p99": pct(scan_t, 0.99) * 1e6,
        "scan_us_max": max(scan_t) * 1e6,
        "scans_per_s": len(scan_t) / sum(scan_t),
        "hits_per_pass": hits,
    }


def bench_local(texts: list[str], threads: int, batch: int) -> dict:
    from stream_processor.models.embeddings.local_use import LocalUSEEmbedder

    t0 = time.perf_counter()
    emb = LocalUSEEmbedder(threads=threads)
    load_s = time.perf_counter() - t0
    emb.embed(texts[:8])  # warm-up
    c0, t0 = time.process_time(), time.perf_counter()
    single = timed_each(lambda t: emb.embed([t]), texts)
    single_wall, single_cpu = time.perf_counter() - t0, time.process_time() - c0
    c0, t0 = time.process_time(), time.perf_counter()
    vectors = [emb.embed(texts[i:i + batch]) for i in range(0, len(texts), batch)]
    batch_wall, batch_cpu = time.perf_counter() - t0, time.process_time() - c0
    v = np.vstack(vectors)
    weights = np.random.default_rng(0).uniform(0.5, 8.0, size=len(DEFAULT_SCRIPT))
    cv = timed_each(lambda _: call_vector(v[:len(DEFAULT_SCRIPT)], weights), range(200))
    n = len(texts)
    return {
        "threads": threads,
        "batch": batch,
        "load_s": load_s,
        "single_ms_per_utt": single_wall / n * 1e3,
        "single_ms_p95": pct(single, 0.95) * 1e3,
        "single_cpu_ms_per_utt": single_cpu / n * 1e3,
        "batch_ms_per_utt": batch_wall / n * 1e3,
        "batch_cpu_ms_per_utt": batch_cpu / n * 1e3,
        "batch_speedup": single_wall / batch_wall,
        "call_vector_us": statistics.median(cv) * 1e6,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--utterances", type=int, default=200)
    p.add_argument("--repeat", type=int, default=20, help="passes over the corpus for the alert scan")
    p.add_argument("--threads", type=int, nargs="+", default=[1])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--skip-embeddings", action="store_true")
    p.add_argument("--json", action="store_true", help=f"also write the results to {RESULTS_DIR}/")
    a = p.parse_args(argv)
    texts = corpus(a.utterances)
    load = os.getloadavg()[0]

    al = bench_alerts(texts, a.repeat)
    print(f"alerts: {al['cues']} cues / {al['patterns']} patterns, catalogue load+compile {al['load_ms']:.1f} ms; "
          f"{a.utterances} utterances x {a.repeat} (mean {al['mean_chars']:.0f} chars), {al['hits_per_pass']} hits/pass")
    print("| | p50 µs | p99 µs |")
    print("|---|---:|---:|")
    print(f"| normalise only (baseline) | {al['normalise_us_p50']:.1f} | {al['normalise_us_p99']:.1f} |")
    print(f"| AlertDetector.scan | {al['scan_us_p50']:.1f} | {al['scan_us_p99']:.1f} |")
    print(f"scan max {al['scan_us_max']:.0f} µs; {al['scans_per_s']:,.0f} scans/s on one core; "
          f"scan / normalise = {al['scan_us_p50'] / al['normalise_us_p50']:.1f}x\n")

    rows = []
    if not a.skip_embeddings:
        for th in a.threads:
            rows.append(bench_local(texts, th, a.batch))
        print(f"local USE multilingual v3 (512-d), {a.utterances} utterances:")
        print("| threads | load s | batch 1 ms/utt (p95) | batch 1 CPU ms/utt | "
              f"batch {a.batch} ms/utt | batch {a.batch} CPU ms/utt | batch speedup | call_vector µs |")
        print("|---:|---:|---:|---:|---:|---:|---:|---:|")
        for r in rows:
            print(f"| {r['threads']} | {r['load_s']:.2f} | {r['single_ms_per_utt']:.2f} ({r['single_ms_p95']:.2f}) | "
                  f"{r['single_cpu_ms_per_utt']:.2f} | {r['batch_ms_per_utt']:.2f} | {r['batch_cpu_ms_per_utt']:.2f} | "
                  f"{r['batch_speedup']:.2f}x | {r['call_vector_us']:.0f} |")
    print(f"\nload average at start: {load:.2f}")

    if a.json:
        RESULTS_DIR.mkdir(exist_ok=True)
        out = RESULTS_DIR / f"embed-{time.strftime('%Y%m%d-%H%M%S')}.json"
        out.write_text(json.dumps({"alerts": al, "local": rows, "loadavg": load, "python": sys.version,
                                   "machine": platform.machine(), "args": vars(a)}, indent=2))
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
