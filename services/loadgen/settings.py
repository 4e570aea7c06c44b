"""The load generator's settings (env prefix ``LUPITA_``); the only place it reads the environment."""

from __future__ import annotations

from pathlib import Path

from pydantic import SecretStr

from lupita.config import CommonSettings

_REPO_ROOT = Path(__file__).resolve().parents[2]


def _default_cache_dir() -> Path:
    # In a source checkout: <repo>/.cache/loadgen (the folder ignores itself, see synth.py);
    # installed elsewhere (container image): the user's cache folder.
    if (_REPO_ROOT / "pyproject.toml").exists():
        return _REPO_ROOT / ".cache" / "loadgen"
    return Path.home() / ".cache" / "lupita" / "loadgen"


class LoadgenSettings(CommonSettings):
    """Where the simulator connects and how it authenticates."""

    # gRPC target of the media bridge (host:port).
    bridge_target: str = "127.0.0.1:50061"
    # Bearer tokens the bridge accepts, comma separated; the simulator uses the first one.
    bridge_tokens: SecretStr = SecretStr("")
    # Where synthesised utterances are cached (empty string disables the cache).
    loadgen_cache_dir: str = str(_default_cache_dir())

    @property
    def first_token(self) -> str:
        tokens = [t.strip() for t in self.bridge_tokens.get_secret_value().split(",")]
        return next((t for t in tokens if t), "")

    @property
    def cache_dir(self) -> Path | None:
        return Path(self.loadgen_cache_dir) if self.loadgen_cache_dir else None
