"""Spanish telephone speech for simulated calls (espeak-ng + sox), and stereo WAV I/O.

Plain synchronous code, no gRPC. A dialogue is a list of turns ``(leg, text, pause_after_s)``;
:func:`synthesize_dialogue` speaks each turn with espeak-ng, band-limits it to the telephone
band (300-3400 Hz) and resamples it to 8 or 16 kHz with sox, and lays the turns out on a
stereo int16 array: column 0 (left) = the Lupita leg, column 1 (right) = the person's leg.
While one leg talks the other is silent (exactly zero unless a noise floor is asked for).

Synthesised utterances are cached by content hash (text, voice, rate, pipeline version) in a
folder that ignores itself in git (it holds a ``.gitignore`` with ``*``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import wave
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, NamedTuple

import numpy as np

from lupita.audio import SUPPORTED_RATES, mulaw_decode, mulaw_encode

LUPITA = "lupita"
PERSON = "person"
LEGS = (LUPITA, PERSON)  # column order in the stereo array: left, right

TELEPHONE_BAND_HZ = (300, 3400)
# Bumped whenever the synthesis pipeline changes, so stale cache entries are not reused.
PIPELINE_VERSION = 1
_TOOL_TIMEOUT_S = 30


class SynthError(RuntimeError):
    """espeak-ng or sox is missing or failed."""


class WavFormatError(ValueError):
    """A WAV file the simulator cannot stream as it is (the message says how to convert it)."""


class Turn(NamedTuple):
    leg: str  # LUPITA or PERSON
    text: str
    pause_after_s: float = 0.4


@dataclass(frozen=True)
class Voice:
    """An espeak-ng voice (language[+variant]), speed in words per minute, pitch 0-99."""

    name: str
    speed_wpm: int = 150
    pitch: int = 50


DEFAULT_VOICES = {
    # Lupita: Latin-American Spanish, female variant, friendly pace.
    LUPITA: Voice("es-419+f3", speed_wpm=150, pitch=60),
    # The person: an elderly woman in Oaxaca, slower and lower.
    PERSON: Voice("es-419+f4", speed_wpm=125, pitch=35),
}

# A Lupita check-in call with an elderly person in Oaxaca: greeting, how are you,
# medication, family, farewell.
DEFAULT_SCRIPT: tuple[Turn, ...] = (
    Turn(LUPITA, "Buenos días, doña Carmen. Habla Lupita, de Salud Compartida. ¿Cómo amaneció hoy?", 0.5),
    Turn(PERSON, "Ay, buenos días, Lupita. Pues aquí andamos, gracias a Dios. Un poco cansada.", 0.6),
    Turn(LUPITA, "Me alegra escucharla. ¿Durmió bien anoche? ¿Le siguen doliendo las rodillas?", 0.5),
    Turn(PERSON, "Dormí regular. Las rodillas sí me duelen cuando hace frío aquí en Oaxaca.", 0.7),
    Turn(LUPITA, "Entiendo. ¿Ya se tomó la pastilla de la presión esta mañana, con el desayuno?", 0.5),
    Turn(PERSON, "Sí, ya me la tomé con mi atole. Nada más me falta la de la noche.", 0.6),
    Turn(LUPITA, "Muy bien, doña Carmen. ¿Y cómo está su familia? ¿Ha hablado con su hijo Miguel?", 0.5),
    Turn(PERSON, "Sí, Miguel me llamó el domingo desde Los Ángeles. Mi nieta Sofía ya va a la escuela.", 0.6),
    Turn(LUPITA, "Qué bonito. Le mando un abrazo a Sofía. ¿Necesita algo para esta semana?", 0.5),
    Turn(PERSON, "No, mija, estoy bien. Nomás que me acompañen con sus llamadas.", 0.6),
    Turn(LUPITA, "Con mucho gusto. La llamo el jueves. Cuídese mucho y tome agüita. Hasta luego, doña Carmen.", 0.4),
    Turn(PERSON, "Gracias, Lupita. Que Dios te bendiga. Hasta luego.", 0.8),
)


# --- tools -------------------------------------------------------------------------------


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise SynthError(f"{name} is not installed (Debian: apt-get install espeak-ng sox)")
    return path


def _run(cmd: list[str], data: bytes) -> bytes:
    try:
        proc = subprocess.run(cmd, input=data, capture_output=True, timeout=_TOOL_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired as exc:
        raise SynthError(f"{Path(cmd[0]).name} timed out after {_TOOL_TIMEOUT_S}s") from exc
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip()
        raise SynthError(f"{Path(cmd[0]).name} failed (exit {proc.returncode}): {err}")
    return proc.stdout


def _sox_raw_out(sample_rate: int) -> list[str]:
    return ["-t", "raw", "-e", "signed-integer", "-b", "16", "-c", "1", "-L", "-r", str(sample_rate), "-"]


def band_limit(samples: np.ndarray, in_rate: int, out_rate: int, *, normalize_dbfs: float | None = None) -> np.ndarray:
    """Telephone band (300-3400 Hz) and resample ``in_rate`` -> ``out_rate`` with sox (int16 mono)."""
    _check_rate(out_rate)
    data = np.asarray(samples, dtype="<i2").tobytes()
    cmd = [_tool("sox"), "-D", "-t", "raw", "-e", "signed-integer", "-b", "16", "-c", "1", "-L",
           "-r", str(in_rate), "-", *_sox_raw_out(out_rate), *_band_effects(out_rate, normalize_dbfs)]
    return np.frombuffer(_run(cmd, data), dtype="<i2").astype(np.int16)


def _band_effects(out_rate: int, normalize_dbfs: float | None) -> list[str]:
    low, high = TELEPHONE_BAND_HZ
    effects = ["sinc", f"{low}-{high}", "rate", "-v", str(out_rate)]
    if normalize_dbfs is not None:
        effects += ["gain", "-n", f"{normalize_dbfs:g}"]
    return effects


def synthesize_utterance(
    text: str, sample_rate: int = 8000, voice: Voice = DEFAULT_VOICES[LUPITA], *, cache_dir: Path | None = None
) -> np.ndarray:
    """One utterance as telephone-band int16 mono at ``sample_rate`` (peak -6 dBFS)."""
    _check_rate(sample_rate)
    if not text.strip():
        raise ValueError("cannot synthesise empty text")
    key = hashlib.sha256(
        json.dumps([PIPELINE_VERSION, text, voice.name, voice.speed_wpm, voice.pitch, sample_rate]).encode()
    ).hexdigest()
    cached = _cache_get(cache_dir, key)
    if cached is not None:
        return cached
    wav = _run(
        [_tool("espeak-ng"), "-b", "1", "-v", voice.name, "-s", str(voice.speed_wpm), "-p", str(voice.pitch), "--stdout"],
        text.encode("utf-8"),
    )
    if len(wav) <= 44:
        raise SynthError(f"espeak-ng produced no audio for voice {voice.name!r}")
    cmd = [_tool("sox"), "-D", "-t", "wav", "-", *_sox_raw_out(sample_rate), *_band_effects(sample_rate, -6.0)]
    samples = np.frombuffer(_run(cmd, wav), dtype="<i2").astype(np.int16)
    _cache_put(cache_dir, key, samples)
    return samples


def synthesize_dialogue(
    turns: Iterable[Turn | tuple[str, str, float]] = DEFAULT_SCRIPT,
    sample_rate: int = 8000,
    *,
    voices: dict[str, Voice] | None = None,
    lead_in_s: float = 0.2,
    mulaw: bool = False,
    noise_dbfs: float | None = None,
    seed: int = 0,
    cache_dir: Path | None = None,
) -> np.ndarray:
    """Stereo int16 array ``(n, 2)``: left = Lupita, right = the person, turns one after another.

    Each turn is followed by ``pause_after_s`` of silence on both legs. ``mulaw`` passes the
    result through G.711 mu-law quantisation (the telephone path); ``noise_dbfs`` adds an
    independent, band-limited noise floor at that RMS level to both legs (e.g. -55).
    """
    _check_rate(sample_rate)
    voices = {**DEFAULT_VOICES, **(voices or {})}
    pieces: list[tuple[int, np.ndarray, int]] = []  # (column, samples, silence after)
    for turn in turns:
        leg, text, pause = Turn(*turn)
        if leg not in LEGS:
            raise ValueError(f"unknown leg {leg!r}: expected one of {LEGS}")
        if pause < 0:
            raise ValueError(f"pause_after_s must be >= 0, got {pause}")
        speech = synthesize_utterance(text, sample_rate, voices[leg], cache_dir=cache_dir)
        pieces.append((LEGS.index(leg), speech, int(round(pause * sample_rate))))
    if not pieces:
        raise ValueError("a dialogue needs at least one turn")
    lead = int(round(lead_in_s * sample_rate))
    total = lead + sum(len(s) + gap for _, s, gap in pieces)
    out = np.zeros((total, 2), dtype=np.int16)
    pos = lead
    for column, speech, gap in pieces:
        out[pos : pos + len(speech), column] = speech
        pos += len(speech) + gap
    if noise_dbfs is not None:
        out = _add_noise(out, sample_rate, noise_dbfs, seed)
    if mulaw:
        for column in range(2):
            out[:, column] = mulaw_decode(mulaw_encode(out[:, column]))
    return out


def _add_noise(stereo: np.ndarray, sample_rate: int, noise_dbfs: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rms = 32768.0 * 10 ** (noise_dbfs / 20)
    mixed = stereo.astype(np.float64)
    for column in range(2):
        white = np.clip(rng.normal(0.0, 1.0, len(stereo)) * 8000.0, -32768, 32767).astype(np.int16)
        band = band_limit(white, sample_rate, sample_rate).astype(np.float64)[: len(stereo)]
        band_rms = float(np.sqrt(np.mean(band**2))) or 1.0
        mixed[: len(band), column] += band * (rms / band_rms)
    return np.clip(np.round(mixed), -32768, 32767).astype(np.int16)


# --- cache -------------------------------------------------------------------------------


def _cache_get(cache_dir: Path | None, key: str) -> np.ndarray | None:
    if cache_dir is None:
        return None
    path = Path(cache_dir) / f"{key}.pcm"
    try:
        return np.frombuffer(path.read_bytes(), dtype="<i2").astype(np.int16)
    except FileNotFoundError:
        return None


def _cache_put(cache_dir: Path | None, key: str, samples: np.ndarray) -> None:
    if cache_dir is None:
        return
    cache_dir = Path(cache_dir)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        ignore = cache_dir / ".gitignore"
        if not ignore.exists():
            ignore.write_text("# synthesised audio cache (lupita loadgen)\n*\n")
        fd, tmp = tempfile.mkstemp(dir=cache_dir, suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(samples.astype("<i2").tobytes())
        os.replace(tmp, cache_dir / f"{key}.pcm")
    except OSError:
        pass  # a cache that cannot be written only costs time


# --- WAV I/O -----------------------------------------------------------------------------


def _check_rate(sample_rate: int) -> None:
    if sample_rate not in SUPPORTED_RATES:
        raise ValueError(f"sample rate must be one of {SUPPORTED_RATES}, got {sample_rate}")


def read_wav_legs(path: str | Path) -> tuple[int, np.ndarray]:
    """A stereo 16-bit PCM WAV (left = Lupita, right = person) -> ``(sample_rate, int16 (n, 2))``.

    Nothing is resampled or converted: any other layout is refused with the sox command that
    converts it.
    """
    path = Path(path)
    fix = f"convert it with: sox {path} -e signed-integer -b 16 -c 2 -r 8000 OUT.wav"
    try:
        with wave.open(str(path), "rb") as w:
            channels, width, rate, n = w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()
            data = w.readframes(n)
    except FileNotFoundError:
        raise WavFormatError(f"{path}: no such file") from None
    except (wave.Error, EOFError) as exc:
        raise WavFormatError(f"{path}: not a PCM WAV file ({exc}); {fix}") from None
    if channels != 2:
        raise WavFormatError(
            f"{path}: {channels} channel(s); expected 2 (left = Lupita, right = person); {fix}"
        )
    if width != 2:
        raise WavFormatError(f"{path}: {8 * width}-bit samples; expected 16-bit PCM; {fix}")
    if rate not in SUPPORTED_RATES:
        raise WavFormatError(
            f"{path}: sample rate {rate} Hz is not supported (8000 or 16000 only; the simulator "
            f"does not resample); {fix}"
        )
    samples = np.frombuffer(data, dtype="<i2").astype(np.int16)
    if samples.size == 0:
        raise WavFormatError(f"{path}: the file holds no audio frames")
    if samples.size % 2:
        raise WavFormatError(f"{path}: truncated data (odd number of samples for 2 channels)")
    return rate, samples.reshape(-1, 2)


def write_wav(path: str | Path, stereo: np.ndarray, sample_rate: int) -> None:
    """Write a stereo int16 array as a 16-bit PCM WAV (left = Lupita, right = person)."""
    _check_rate(sample_rate)
    stereo = np.asarray(stereo)
    if stereo.ndim != 2 or stereo.shape[1] != 2:
        raise ValueError(f"expected an (n, 2) array, got shape {stereo.shape}")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(stereo.astype("<i2").tobytes())
