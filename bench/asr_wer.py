"""ASR word accuracy: word error rate of the local Whisper base over a small Spanish corpus spoken
by several espeak-ng voices through the telephone band, against baselines in the same run.

The tests assert what holds for any voice (a voiced segment gets a non-empty transcript in its leg
and segment, word timings in range); which words Whisper base hears depends on the voice, so word
accuracy is measured here instead. Corpus: short check-in sentences (``SENTENCES``) x voices
(``VOICES``: Latin-American and Castilian espeak-ng Spanish, female and male variants, slow to
fast, among them the simulator's Lupita and elderly-person voices), synthesised with the
simulator's own code (``loadgen.synth.synthesize_utterance``: espeak-ng, sox 300-3400 Hz band,
resampled), 0.3 s of silence around each sentence, each transcribed on its own as the transcriber
stage does.

Configurations (``--configs RATE:BEAM ...``), all the same corpus and model: ``8000:5`` is what
the platform runs (8 kHz telephone audio, beam 5 for finals); ``8000:1`` (greedy decoding) and
``16000:5`` (the same band-limited speech at 16 kHz) are the baselines. Printed: WER per voice and
configuration, overall WER, and how often the words the tests used to require ("presion",
"manana", ...) were heard, per voice.

    .venv/bin/python bench/asr_wer.py                        # 6 sentences x 8 voices x 3 configs (~4-6 min on 2 cores)
    .venv/bin/python bench/asr_wer.py --configs 8000:5 --json
    .venv/bin/python bench/asr_wer.py --device cuda --compute-type float16   # on a GPU machine
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from asr import wer  # bench/asr.py: the same word error rate as the real-time-factor benchmark

from loadgen.synth import Voice, synthesize_utterance
from stream_processor.models.asr.guards import normalize_text

RESULTS_DIR = Path(__file__).resolve().parent / "results"
PAD_S = 0.3

SENTENCES = (
    "Buenos días doña Carmen, ¿cómo amaneció hoy?",
    "Ya se tomó la pastilla de la presión esta mañana.",
    "Tengo mucho frío y quiero tomar café con leche.",
    "Me duele la rodilla cuando camino al mercado.",
    "Mi hijo Miguel me llamó el domingo desde Los Ángeles.",
    "Tomo mis pastillas para el azúcar con el desayuno.",
)

# (label, voice): the simulator's two voices first, then other variants, speeds and pitches
VOICES = (
    ("lupita es-419+f3 150", Voice("es-419+f3", speed_wpm=150, pitch=60)),
    ("person es-419+f4 125", Voice("es-419+f4", speed_wpm=125, pitch=35)),
    ("es-419+m3 140", Voice("es-419+m3", speed_wpm=140, pitch=45)),
    ("es-419+f2 175", Voice("es-419+f2", speed_wpm=175, pitch=55)),
    ("es-419 (male) 160", Voice("es-419", speed_wpm=160, pitch=50)),
    ("es+f1 (Spain) 150", Voice("es+f1", speed_wpm=150, pitch=55)),
    ("es+m1 (Spain) 130", Voice("es+m1", speed_wpm=130, pitch=40)),
    ("es+klatt 150", Voice("es+klatt", speed_wpm=150, pitch=50)),
)

# the words tests/stream_processor/stages/transcriber/test_pipeline_transcripts.py,
# tests/stream_processor/models/test_asr_local.py and tests/test_end_to_end.py used to require
KEY_WORDS = ("buenos dias", "carmen", "presion", "manana", "tengo", "cafe", "leche", "pastillas")


@dataclass
class Cell:
    edits: int = 0
    words: int = 0
    keys_heard: int = 0
    keys_said: int = 0
    empty: int = 0  # sentences that gave no text at all

    def add(self, ref: str, hyp: str) -> None:
        e, n = wer(ref, hyp)
        self.edits, self.words = self.edits + e, self.words + n
        r, h = normalize_text(ref), f" {normalize_text(hyp)} "
        said = [k for k in KEY_WORDS if f" {k} " in f" {r} "]
        self.keys_said += len(said)
        self.keys_heard += sum(f" {k} " in h for k in said)
        self.empty += not hyp.strip()

    @property
    def wer(self) -> float:
        return self.edits / max(1, self.words)


def parse_config(text: str) -> tuple[int, int]:
    rate, beam = text.split(":")
    if int(rate) not in (8000, 16000) or int(beam) < 1:
        raise argparse.ArgumentTypeError(f"expected RATE:BEAM with RATE 8000 or 16000, got {text!r}")
    return int(rate), int(beam)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", type=parse_config, nargs="+", default=[(8000, 5), (8000, 1), (16000, 5)],
                   help="RATE:BEAM pairs; the first is the platform's setting, the others baselines")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--compute-type", default="int8")
    p.add_argument("--json", action="store_true", help=f"also write the results to {RESULTS_DIR}/")
    args = p.parse_args(argv)

    import ctranslate2
    import faster_whisper

    from stream_processor.models.asr.whisper_local import WhisperLocal, WhisperOptions

    print(f"ASR word error rate: {len(SENTENCES)} Spanish sentences x {len(VOICES)} espeak-ng voices, telephone "
          f"band (300-3400 Hz), each sentence transcribed on its own")
    print(f"faster-whisper {faster_whisper.__version__}, ctranslate2 {ctranslate2.__version__}, Whisper base "
          f"(packaged), {args.device} {args.compute_type}, {args.threads} threads, language es, VAD filter on, "
          f"temperature fallback on")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores shared with other "
          f"users; load average {os.getloadavg()[0]:.1f}")
    cache = RESULTS_DIR / ".synth"
    models: dict[int, WhisperLocal] = {}
    cells: dict[tuple[str, tuple[int, int]], Cell] = {}
    wall0 = time.perf_counter()
    for config in args.configs:
        rate, beam = config
        if beam not in models:
            models[beam] = WhisperLocal(threads=args.threads, device=args.device, compute_type=args.compute_type,
                                        options=WhisperOptions(beam_size=beam))
        model = models[beam]
        pad = np.zeros(int(PAD_S * rate), np.int16)
        for label, voice in VOICES:
            cell = cells.setdefault((label, config), Cell())
            for sentence in SENTENCES:
                speech = synthesize_utterance(sentence, rate, voice, cache_dir=cache)
                pcm = np.concatenate([pad, speech, pad]).astype(np.float32) / 32768
                cell.add(sentence, model.transcribe(pcm, rate).text)
            print(f"  done: {rate} Hz beam {beam} {label}: WER {cell.wer:.1%}", file=sys.stderr)
    wall = time.perf_counter() - wall0

    names = [f"{rate // 1000} kHz beam {beam}" for rate, beam in args.configs]
    print()
    head = f"{'voice':<22}" + "".join(f" {n:>15}" for n in names) + f" {'key words heard':>16}"
    print(head)
    print("-" * len(head))
    first = args.configs[0]
    for label, _ in VOICES:
        row = "".join(f" {cells[(label, c)].wer:15.1%}" for c in args.configs)
        k = cells[(label, first)]
        print(f"{label:<22}{row} {f'{k.keys_heard}/{k.keys_said}':>16}")
    totals = {}
    for c in args.configs:
        t = Cell()
        for label, _ in VOICES:
            x = cells[(label, c)]
            t.edits, t.words = t.edits + x.edits, t.words + x.words
            t.keys_heard, t.keys_said, t.empty = t.keys_heard + x.keys_heard, t.keys_said + x.keys_said, t.empty + x.empty
        totals[c] = t
    print("-" * len(head))
    k = totals[first]
    print(f"{'overall':<22}" + "".join(f" {totals[c].wer:15.1%}" for c in args.configs)
          + f" {f'{k.keys_heard}/{k.keys_said}':>16}")
    print(f"{'sentences with no text':<22}" + "".join(f" {totals[c].empty:15d}" for c in args.configs))
    print()
    print(f"{len(SENTENCES) * len(VOICES)} sentences per configuration, {totals[first].words} reference words; "
          f"{wall:.0f} s in all. WER = (substitutions + deletions + insertions) / reference words, after "
          f"lower-casing and removing accents and punctuation. Key words heard: of the words the tests used "
          f"to require ({', '.join(KEY_WORDS)}), how many of those spoken were in the transcript, first "
          f"configuration.")
    if args.json:
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        out = RESULTS_DIR / f"asr-wer-{time.strftime('%Y%m%d-%H%M%S')}.json"
        out.write_text(json.dumps({
            "machine": {"processor": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                        "loadavg": os.getloadavg()},
            "device": args.device, "compute_type": args.compute_type, "threads": args.threads,
            "sentences": SENTENCES, "wall_s": wall,
            "cells": [{"voice": label, "rate": c[0], "beam": c[1], "wer": x.wer, "edits": x.edits, "words": x.words,
                       "key_words_heard": x.keys_heard, "key_words_said": x.keys_said, "empty": x.empty}
                      for (label, c), x in cells.items()],
        }, indent=2))
        print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
