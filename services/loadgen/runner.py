"""N concurrent simulated calls with a bounded ramp, and their report.

Calls share a small pool of gRPC channels (one TCP connection per ``streams_per_channel``
calls) and start at most ``ramp_per_s`` per second. Phone numbers are synthetic
(``+5295100xxxxx``) and never leave this module: reports carry call ids only.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from .client import CallResult, make_channel, stream_call
from .frames import slice_frames


def synthetic_phone(index: int) -> str:
    """A synthetic Oaxaca (951) number for call ``index``: ``+5295100`` + 5 digits."""
    return f"+5295100{index % 100_000:05d}"


def new_call_id(prefix: str = "sim") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:16]}"


def percentile_ms(latencies_s: np.ndarray, q: float) -> float | None:
    if latencies_s.size == 0:
        return None
    return float(np.percentile(latencies_s, q) * 1000.0)


@dataclass
class RunReport:
    calls: int
    ok: int
    failed: int
    frames_total: int
    frames_sent: int
    frames_acked: int
    acks: int
    credit_waits: int
    errors_by_code: dict[str, int]
    latency_ms: dict[str, float | None]
    wall_s: float
    audio_s_per_call: float
    results: list[CallResult] = field(repr=False, default_factory=list)

    @property
    def frames_per_s(self) -> float:
        """Frames acknowledged (durable in Kafka) per second of wall time."""
        return self.frames_acked / self.wall_s if self.wall_s else 0.0

    @property
    def sent_per_s(self) -> float:
        return self.frames_sent / self.wall_s if self.wall_s else 0.0

    @property
    def call_minutes(self) -> float:
        """Minutes of call audio streamed (both legs of a call count once)."""
        return self.calls * self.audio_s_per_call / 60.0

    def to_dict(self, *, per_call: bool = True) -> dict:
        out = {
            "calls": self.calls,
            "ok": self.ok,
            "failed": self.failed,
            "frames_total": self.frames_total,
            "frames_sent": self.frames_sent,
            "frames_acked": self.frames_acked,
            "acks": self.acks,
            "credit_waits": self.credit_waits,
            "errors_by_code": self.errors_by_code,
            "ack_latency_ms": self.latency_ms,
            "wall_s": round(self.wall_s, 3),
            "frames_per_s": round(self.frames_per_s, 1),
            "sent_frames_per_s": round(self.sent_per_s, 1),
            "audio_s_per_call": round(self.audio_s_per_call, 3),
        }
        if per_call:
            out["per_call"] = [r.summary() for r in self.results]
        return out


def build_report(results: list[CallResult], wall_s: float, audio_s_per_call: float) -> RunReport:
    """Aggregate call results (pure function)."""
    errors: Counter[str] = Counter()
    for r in results:
        if r.status != "OK":
            errors[r.status] += 1
        for code, _ in r.errors:
            if code != r.status:
                errors[code] += 1
        if r.status == "OK" and not r.ok and not r.errors:
            errors["INCOMPLETE"] += 1  # stream closed OK but frames were not all acked
    lat = np.fromiter((x for r in results for x in r.latencies_s), dtype=np.float64)
    return RunReport(
        calls=len(results),
        ok=sum(r.ok for r in results),
        failed=sum(not r.ok for r in results),
        frames_total=sum(r.frames_total for r in results),
        frames_sent=sum(r.frames_sent for r in results),
        frames_acked=sum(r.frames_acked for r in results),
        acks=sum(r.acks for r in results),
        credit_waits=sum(r.credit_waits for r in results),
        errors_by_code=dict(sorted(errors.items())),
        latency_ms={
            "p50": percentile_ms(lat, 50),
            "p95": percentile_ms(lat, 95),
            "p99": percentile_ms(lat, 99),
            "max": float(lat.max() * 1000.0) if lat.size else None,
        },
        wall_s=wall_s,
        audio_s_per_call=audio_s_per_call,
        results=results,
    )


async def run_calls(
    target: str,
    token: str,
    stereo: np.ndarray,
    sample_rate: int,
    codec: int,
    *,
    calls: int = 1,
    frame_ms: int = 20,
    speed: float = 1.0,
    consent: bool = True,
    call_ids: list[str] | None = None,
    call_id_prefix: str = "sim",
    region: str = "oaxaca",
    ramp_per_s: float = 100.0,
    streams_per_channel: int = 100,
    timeout_s: float | None = None,
) -> RunReport:
    """Run ``calls`` simulated calls of the same audio concurrently and report on them."""
    if calls < 1:
        raise ValueError(f"calls must be >= 1, got {calls}")
    if ramp_per_s <= 0:
        raise ValueError(f"ramp_per_s must be > 0, got {ramp_per_s}")
    if call_ids is not None and len(call_ids) != calls:
        raise ValueError(f"{len(call_ids)} call ids for {calls} calls")
    ids = call_ids or [new_call_id(call_id_prefix) for _ in range(calls)]
    frames = slice_frames(stereo, sample_rate, codec, frame_ms)
    audio_s = len(frames) // 2 * frame_ms / 1000.0
    n_channels = -(-calls // max(1, streams_per_channel))
    channels = [make_channel(target) for _ in range(n_channels)]

    async def one(i: int) -> CallResult:
        await asyncio.sleep(i / ramp_per_s)
        return await stream_call(
            channels[i % n_channels],
            token,
            ids[i],
            None,
            sample_rate,
            codec,
            frame_ms=frame_ms,
            speed=speed,
            consent=consent,
            phone=synthetic_phone(i),
            region=region,
            frames=frames,
            timeout_s=timeout_s,
        )

    t0 = time.perf_counter()
    try:
        results = await asyncio.gather(*(one(i) for i in range(calls)))
    finally:
        await asyncio.gather(*(ch.close() for ch in channels), return_exceptions=True)
    return build_report(list(results), time.perf_counter() - t0, audio_s)


def format_report(report: RunReport) -> str:
    """Human-readable summary (no phone numbers; call ids only for failures)."""

    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v:.1f} ms"

    lat = report.latency_ms
    lines = [
        f"calls          {report.calls} ({report.ok} ok, {report.failed} failed)",
        f"audio          {report.audio_s_per_call:.1f} s per call, {report.call_minutes:.1f} call-minutes",
        f"frames sent    {report.frames_sent} of {report.frames_total} ({report.sent_per_s:,.0f}/s)",
        f"frames acked   {report.frames_acked} ({report.frames_per_s:,.0f}/s) in {report.acks} acks",
        f"ack latency    p50 {ms(lat['p50'])}  p95 {ms(lat['p95'])}  p99 {ms(lat['p99'])}  max {ms(lat['max'])}",
        f"credit waits   {report.credit_waits}",
        f"wall time      {report.wall_s:.2f} s",
    ]
    if report.errors_by_code:
        lines.append("errors         " + ", ".join(f"{k}={v}" for k, v in report.errors_by_code.items()))
        failed = [r for r in report.results if not r.ok][:10]
        for r in failed:
            detail = r.errors[0][1] if r.errors else r.details
            lines.append(f"  {r.call_id}: {r.status} {detail}".rstrip())
    return "\n".join(lines)
