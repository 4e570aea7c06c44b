"""VAD benchmark: batched Silero inference vs one inference per stream, same machine, same run.

Each stream is a different stretch of the synthesised Spanish call (the person's leg,
telephone band), so the streams carry different audio. Two levels are measured:

- ``model``: ``SileroModel.run`` alone. Batched: one run of ``[B, ctx + window]`` per step
  for B streams. Baseline: B runs of ``[1, ctx + window]`` per step (one per stream).
- ``vad``: the full ``BatchedVad`` path the Faust agent uses: each stream gets 100 ms of PCM16
  per round (``feed``), then ``drain`` (gather rows, one model run per step, scatter state,
  segmenter). Baseline: the same code with one ``BatchedVad`` per stream, so every window is
  its own inference.

Reported per mode: stream-chunks per CPU-second of this process (one chunk = one 32 ms window:
256 samples at 8 kHz, 512 at 16 kHz), which with ``intra_op_num_threads=1`` is per core; the
ratio batched / per-stream; and how many real-time legs that rate sustains per core
(chunks per second x 0.032 s). Wall-clock rates are printed too: the machine is shared, so
CPU time is the fairer measure. The onnxruntime wheels from PyPI use their own thread pool,
not OpenMP; OMP_NUM_THREADS=1 is set anyway, before onnxruntime is imported.

    .venv/bin/python bench/vad.py                    # 8 kHz, B = 16, 64, 256 (~40 s)
    .venv/bin/python bench/vad.py --rate 16000 --batches 64 --seconds 2 --json
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import asdict, dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

RESULTS_DIR = Path(__file__).resolve().parent / "results"
CHUNK_S = 0.032  # one window, both rates
FEED_MS = 100  # audio per Kafka record in the pipeline


@dataclass
class Row:
    level: str  # model | vad
    batch: int  # streams
    mode: str  # batched | per-stream
    chunks: int
    cpu_s: float
    wall_s: float

    @property
    def per_cpu_s(self) -> float:
        return self.chunks / self.cpu_s if self.cpu_s > 0 else float("nan")

    @property
    def per_wall_s(self) -> float:
        return self.chunks / self.wall_s if self.wall_s > 0 else float("nan")

    @property
    def legs_per_core(self) -> float:
        return self.per_cpu_s * CHUNK_S


def _timed(fn, min_seconds: float) -> tuple[int, float, float]:
    """Call ``fn()`` (returns chunks done) until ``min_seconds`` of CPU time; (chunks, cpu, wall)."""
    fn()  # warm-up (first runs allocate)
    chunks = 0
    c0, w0 = time.process_time(), time.perf_counter()
    while time.process_time() - c0 < min_seconds:
        chunks += fn()
    return chunks, time.process_time() - c0, time.perf_counter() - w0


def stream_audio(rate: int, streams: int, seconds: float) -> list[np.ndarray]:
    """``streams`` different int16 stretches of ``seconds`` of the person's leg of the demo call."""
    from loadgen import synth

    cache = Path(tempfile.gettempdir()) / "lupita-bench-vad-cache"
    leg = synth.synthesize_dialogue(synth.DEFAULT_SCRIPT, rate, cache_dir=cache)[:, 1]
    n = int(seconds * rate)
    leg = np.tile(leg, 1 + n // len(leg) + 1)
    rng = np.random.default_rng(0)
    return [leg[o : o + n].copy() for o in rng.integers(0, len(leg) - n, streams)]


def bench_model(model, audio: list[np.ndarray], rate: int, seconds: float) -> list[Row]:
    from stream_processor.models.vad import CONTEXT_SAMPLES, WINDOW_SAMPLES

    window, ctx = WINDOW_SAMPLES[rate], CONTEXT_SAMPLES[rate]
    b = len(audio)
    steps = 32  # distinct windows, cycled
    x = np.zeros((steps, b, ctx + window), np.float32)
    for i, a in enumerate(audio):
        f = a[: (steps + 1) * window].astype(np.float32) / 32768
        for t in range(steps):
            x[t, i, ctx:] = f[t * window : (t + 1) * window]
            x[t, i, :ctx] = f[t * window - ctx : t * window] if t else 0.0
    state = {"b": np.zeros((2, b, 128), np.float32), "1": [np.zeros((2, 1, 128), np.float32) for _ in range(b)]}
    pos = {"t": 0}

    def batched() -> int:
        t = pos["t"] = (pos["t"] + 1) % steps
        _, state["b"] = model.run(x[t], state["b"], rate)
        return b

    def per_stream() -> int:
        t = pos["t"] = (pos["t"] + 1) % steps
        rows = state["1"]
        for i in range(b):
            _, rows[i] = model.run(x[t, i : i + 1], rows[i], rate)
        return b

    rows = []
    for mode, fn in (("batched", batched), ("per-stream", per_stream)):
        chunks, cpu, wall = _timed(fn, seconds)
        rows.append(Row("model", b, mode, chunks, cpu, wall))
    return rows


def bench_vad(model, audio: list[np.ndarray], rate: int, seconds: float) -> list[Row]:
    from stream_processor.models.vad import BatchedVad

    b = len(audio)
    piece = rate * FEED_MS // 1000
    pcm = [a.astype("<i2").tobytes() for a in audio]
    rounds = len(audio[0]) // piece
    ids = [f"bench-{i:04d}:person" for i in range(b)]

    def runner(vads: list[BatchedVad]):
        pos = {"r": 0}

        def one_round() -> int:
            r = pos["r"]
            if r >= rounds:  # audio used up: start the streams over
                for v in vads:
                    for sid in v.stream_ids:
                        v.discard(sid)
                r = pos["r"] = 0
            done = 0
            lo, hi = 2 * r * piece, 2 * (r + 1) * piece
            for i, sid in enumerate(ids):
                vads[i if len(vads) > 1 else 0].feed(sid, pcm[i][lo:hi], rate)
            for v in vads:
                done += len(v.drain())
            pos["r"] = r + 1
            return done

        return one_round

    rows = []
    for mode, vads in (("batched", [BatchedVad(model)]), ("per-stream", [BatchedVad(model) for _ in range(b)])):
        chunks, cpu, wall = _timed(runner(vads), seconds)
        rows.append(Row("vad", b, mode, chunks, cpu, wall))
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rate", type=int, default=8000, choices=(8000, 16000))
    p.add_argument("--batches", type=int, nargs="+", default=[16, 64, 256], help="streams per batch")
    p.add_argument("--seconds", type=float, default=2.0, help="CPU seconds per measurement (default 2)")
    p.add_argument("--levels", nargs="+", default=["model", "vad"], choices=("model", "vad"))
    p.add_argument("--json", action="store_true", help=f"also write the results to {RESULTS_DIR}/")
    args = p.parse_args(argv)
    if any(b < 1 for b in args.batches) or args.seconds <= 0:
        p.error("batches must be >= 1 and --seconds > 0")

    import onnxruntime

    from stream_processor.models.vad import SileroModel

    model = SileroModel(intra_op_num_threads=1)
    audio_all = stream_audio(args.rate, max(args.batches), seconds=30.0)
    rows: list[Row] = []
    for b in args.batches:
        if "model" in args.levels:
            rows += bench_model(model, audio_all[:b], args.rate, args.seconds)
        if "vad" in args.levels:
            rows += bench_vad(model, audio_all[:b], args.rate, args.seconds)

    cpus = os.cpu_count()
    load = os.getloadavg()
    print(f"Silero VAD (ONNX), {args.rate} Hz, 32 ms windows; onnxruntime {onnxruntime.__version__}, "
          f"intra_op_num_threads=1, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}")
    print(f"machine: {platform.processor() or platform.machine()}, {cpus} cores shared with other users "
          f"(load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}); rates per CPU-second of this process")
    print()
    head = (f"{'level':<6} {'B':>4} {'mode':<11} {'chunks/CPU-s':>13} {'chunks/wall-s':>14} {'us/chunk':>9} "
            f"{'RT legs/core':>13} {'ratio':>6}")
    print(head)
    print("-" * len(head))
    by_key = {(r.level, r.batch, r.mode): r for r in rows}
    for r in rows:
        base = by_key.get((r.level, r.batch, "per-stream"))
        ratio = f"{r.per_cpu_s / base.per_cpu_s:5.1f}x" if base and r.mode == "batched" else ""
        print(f"{r.level:<6} {r.batch:>4} {r.mode:<11} {r.per_cpu_s:13,.0f} {r.per_wall_s:14,.0f} "
              f"{1e6 / r.per_cpu_s:9.1f} {r.legs_per_core:13,.0f} {ratio:>6}")
    print()
    print("chunk = one 32 ms window of one stream; RT legs/core = chunks per CPU-second x 0.032 s;")
    print("ratio = batched / per-stream at the same B. 'vad' includes feeding 100 ms PCM16 pieces,")
    print("row gather/scatter and the segmenter; the Faust agent's own overhead is not included.")

    if args.json:
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        out = RESULTS_DIR / f"vad-{time.strftime('%Y%m%d-%H%M%S')}-{args.rate}.json"
        out.write_text(json.dumps({
            "rate": args.rate, "onnxruntime": onnxruntime.__version__, "cpus": cpus, "loadavg": load,
            "python": sys.version.split()[0],
            "rows": [asdict(r) | {"chunks_per_cpu_s": r.per_cpu_s, "chunks_per_wall_s": r.per_wall_s,
                                  "legs_per_core": r.legs_per_core} for r in rows],
        }, indent=2))
        print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
