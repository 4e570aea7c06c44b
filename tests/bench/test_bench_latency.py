"""bench/latency.py's worker configurations: ``NAME[@REV]=LUPITA_KEY=VALUE;...``, where ``@REV``
runs the worker code of an earlier commit (the issue's baseline, in the same run) from a git
worktree with its own generated protobuf modules."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import latency  # noqa: E402  (bench/latency.py)


def test_a_configuration_names_its_revision_and_environment():
    assert latency.parse_config("base@e2d0fac=LUPITA_ASR_BEST_OF=5;LUPITA_ASR_BEAM_SIZE=3") == (
        "base", "e2d0fac", {"LUPITA_ASR_BEST_OF": "5", "LUPITA_ASR_BEAM_SIZE": "3"})
    assert latency.parse_config("def=") == ("def", None, {})
    assert latency.parse_config("=") == ("default", None, {})


@pytest.mark.parametrize("text, says", [("base@=LUPITA_ASR_BEST_OF=5", "no git revision"),
                                        ("x=ASR_BEST_OF=5", "is not LUPITA_KEY=VALUE"),
                                        ("x=LUPITA_ASR_BEST_OF", "is not LUPITA_KEY=VALUE")])
def test_a_malformed_configuration_is_refused_with_its_reason(text, says):
    with pytest.raises(SystemExit, match=says):
        latency.parse_config(text)


def test_a_revision_runs_from_its_own_worktree_with_generated_protobufs(tmp_path):
    code = latency.checkout_revision("HEAD", tmp_path / "code")
    try:
        assert (code / "services" / "lupita" / "v1" / "audio_pb2.py").is_file()
        # what start_worker does: that tree's services/ ahead of this checkout's editable install
        out = subprocess.run([sys.executable, "-c", "import stream_processor, lupita.v1.audio_pb2 as a; "
                              "print(stream_processor.__file__); print(a.__file__)"],
                             cwd=code, env=dict(os.environ, PYTHONPATH=str(code / "services")),
                             capture_output=True, text=True, check=True).stdout.split()
        assert all(Path(p).resolve().is_relative_to(code.resolve()) for p in out), out
    finally:
        latency.remove_revision(code)
    assert not code.exists()
    listed = subprocess.run(["git", "-C", str(latency.ROOT), "worktree", "list"], capture_output=True,
                            text=True, check=True).stdout
    assert str(code) not in listed


def test_an_unknown_revision_is_refused_with_gits_reason(tmp_path):
    with pytest.raises(SystemExit, match="cannot check out 'no-such-revision-xyz'"):
        latency.checkout_revision("no-such-revision-xyz", tmp_path / "code")


def _worktrees() -> str:
    return subprocess.run(["git", "-C", str(latency.ROOT), "worktree", "list"], capture_output=True,
                          text=True, check=True).stdout


def test_a_revision_whose_protobufs_cannot_be_generated_is_refused_and_removed(tmp_path, monkeypatch):
    # the generator run under an interpreter that fails (as an old tree without lupita.protogen would)
    monkeypatch.setattr(latency.sys, "executable", "false")
    with pytest.raises(SystemExit, match="its protobuf modules could not be generated"):
        latency.checkout_revision("HEAD", tmp_path / "code")
    assert not (tmp_path / "code").exists() and str(tmp_path / "code") not in _worktrees()


def test_the_worktree_goes_when_its_configuration_fails(tmp_path):
    with pytest.raises(RuntimeError, match="worker failed"):
        with latency.worker_code("HEAD", tmp_path / "code") as code:
            assert code != latency.ROOT and code.is_dir()
            raise RuntimeError("worker failed")
    assert not code.exists() and str(code) not in _worktrees()
    with latency.worker_code(None, tmp_path / "unused") as code:
        assert code == latency.ROOT and not (tmp_path / "unused").exists()
