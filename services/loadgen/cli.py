"""``lupita call``: stream a stereo WAV or the synthesised Spanish script as one or N calls.

Exit status: 0 when every call completed (every frame acknowledged), 1 when any call failed,
2 for bad input (WAV format, options, missing token).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys

from lupita.logs import setup_logging

from . import synth
from .frames import CODECS, codec_from_name, fit_duration
from .runner import format_report, new_call_id, run_calls
from .settings import LoadgenSettings

log = logging.getLogger("loadgen")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--target", help="bridge host:port (default LUPITA_BRIDGE_TARGET or 127.0.0.1:50061)")
    parser.add_argument("--token", help="bearer token (default: the first of LUPITA_BRIDGE_TOKENS)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--wav", metavar="FILE", help="stereo 16-bit WAV, 8 or 16 kHz (left = Lupita, right = person)")
    source.add_argument("--script", choices=["default"], default="default",
                        help="synthesise the built-in Spanish check-in call (default)")
    parser.add_argument("--calls", type=_positive_int, default=1, help="concurrent calls (default 1)")
    parser.add_argument("--speed", type=_non_negative_float, default=1.0,
                        help="1 = real time, 4 = four times faster, 0 = as fast as credits allow (default 1)")
    parser.add_argument("--rate", type=int, choices=[8000, 16000],
                        help="sample rate (script: default 8000; WAV: must match the file)")
    parser.add_argument("--codec", choices=sorted(CODECS), default="pcm16", help="payload codec (default pcm16)")
    parser.add_argument("--frame-ms", type=int, default=20, help="frame duration in ms (default 20)")
    parser.add_argument("--duration", type=float, metavar="SECONDS",
                        help="loop or cut the audio to this many seconds per call")
    parser.add_argument("--no-consent", action="store_true", help="the person did not agree to be recorded")
    parser.add_argument("--call-id", help="call id (with --calls N > 1: used as prefix, ID-0, ID-1, ...)")
    parser.add_argument("--region", default="oaxaca", help="caller region label (default oaxaca)")
    parser.add_argument("--ramp", type=float, default=100.0, metavar="CALLS_PER_S",
                        help="start at most this many calls per second (default 100)")
    parser.add_argument("--noise-dbfs", type=float, help="script only: add a noise floor at this RMS level, e.g. -55")
    parser.add_argument("--mulaw-quantize", action="store_true",
                        help="script only: pass the speech through G.711 mu-law quantisation")
    parser.add_argument("--save-wav", metavar="FILE", help="also write the audio that is streamed to this WAV")
    parser.add_argument("--timeout", type=float, metavar="SECONDS", help="per-call deadline (default audio length + 60 s)")
    parser.add_argument("--json", action="store_true", help="print the report as one JSON object")


def _positive_int(value: str) -> int:
    n = int(value)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {n}")
    return n


def _non_negative_float(value: str) -> float:
    x = float(value)
    if x < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {x}")
    return x


def load_audio(args: argparse.Namespace, settings: LoadgenSettings) -> tuple[int, "synth.np.ndarray"]:
    """The stereo audio to stream and its rate, from --wav or the script (raises ValueError)."""
    if args.wav:
        rate, stereo = synth.read_wav_legs(args.wav)
        if args.rate and args.rate != rate:
            raise synth.WavFormatError(
                f"{args.wav} is {rate} Hz but --rate {args.rate} was asked; the simulator does not "
                f"resample (convert with: sox {args.wav} -r {args.rate} OUT.wav)"
            )
    else:
        rate = args.rate or 8000
        stereo = synth.synthesize_dialogue(
            synth.DEFAULT_SCRIPT, rate, mulaw=args.mulaw_quantize, noise_dbfs=args.noise_dbfs,
            cache_dir=settings.cache_dir,
        )
    if args.duration:
        stereo = fit_duration(stereo, rate, args.duration)
    return rate, stereo


def run(args: argparse.Namespace) -> int:
    settings = LoadgenSettings()
    setup_logging("loadgen", settings.log_level)
    for handler in logging.getLogger().handlers:  # stdout carries the report
        handler.setStream(sys.stderr)
    token = args.token if args.token is not None else settings.first_token
    if not token:
        print("error: no bearer token: pass --token or set LUPITA_BRIDGE_TOKENS", file=sys.stderr)
        return 2
    try:
        rate, stereo = load_audio(args, settings)
        codec = codec_from_name(args.codec)
    except (ValueError, synth.SynthError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.save_wav:
        synth.write_wav(args.save_wav, stereo, rate)
    if args.call_id:
        ids = [args.call_id] if args.calls == 1 else [f"{args.call_id}-{i}" for i in range(args.calls)]
    else:
        ids = [new_call_id() for _ in range(args.calls)]
    target = args.target or settings.bridge_target
    log.info("starting calls", extra={"stage": "loadgen", "calls": args.calls, "target": target,
                                      "speed": args.speed, "sample_rate": rate, "codec": args.codec})
    try:
        report = asyncio.run(
            run_calls(
                target, token, stereo, rate, codec,
                calls=args.calls, frame_ms=args.frame_ms, speed=args.speed, consent=not args.no_consent,
                call_ids=ids, region=args.region, ramp_per_s=args.ramp, timeout_s=args.timeout,
            )
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report.to_dict(), ensure_ascii=False))
    else:
        print(f"target         {target}")
        if args.calls == 1:
            print(f"call id        {ids[0]}")
        print(format_report(report))
    return 0 if report.failed == 0 else 1
