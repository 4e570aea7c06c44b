"""Postgres (run as its own user) works from a clone its user cannot enter.

PostgreSQL refuses to run as root, so the stack runs it as the `postgres` user; a clone inside a
private directory (root's home is mode 0700) is closed to that user. The decision (can it enter
the stack dir?) is tested pure here; the last test runs `lupita stack up --only postgres` from a
copy of this working tree inside a 0700 directory, as a user would.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import psycopg
import pytest

from lupita_dev.stack import manager

REPO = Path(__file__).resolve().parents[2]
PG_UID, PG_GROUPS = 101, {104}


def st(mode: int, uid: int = 0, gid: int = 0) -> SimpleNamespace:
    return SimpleNamespace(st_mode=stat.S_IFDIR | mode, st_uid=uid, st_gid=gid)


@pytest.mark.parametrize(
    ("mode", "owner", "group", "expected"),
    [
        (0o755, 0, 0, True),       # o+x
        (0o700, 0, 0, False),      # root's home
        (0o711, 0, 0, True),       # search only is enough
        (0o750, 0, 104, True),     # a group of the user, g+x
        (0o705, 0, 104, False),    # group member: group bits decide even if "other" allows
        (0o070, 101, 0, False),    # owner: owner bits decide even if group allows
        (0o700, 101, 104, True),   # the user's own directory
        (0o750, 0, 999, False),    # someone else's group
    ],
)
def test_may_traverse_follows_the_kernel_rule(mode, owner, group, expected):
    assert manager.may_traverse(stat.S_IFDIR | mode, owner, group, PG_UID, PG_GROUPS) is expected


def test_root_may_traverse_anything():
    assert manager.may_traverse(stat.S_IFDIR | 0o000, 5, 5, 0, {0})


def test_blocking_dirs_names_every_closed_directory_from_the_root_down():
    modes = {"/": 0o755, "/root": 0o700, "/root/x": 0o755, "/root/x/.stack": 0o750}
    blocked = manager.blocking_dirs(Path("/root/x/.stack"), PG_UID, PG_GROUPS,
                                    stat_fn=lambda p: st(modes[str(p)]))
    assert blocked == [Path("/root"), Path("/root/x/.stack")]
    modes["/root"] = 0o701
    modes["/root/x/.stack"] = 0o755
    assert manager.blocking_dirs(Path("/root/x/.stack"), PG_UID, PG_GROUPS,
                                 stat_fn=lambda p: st(modes[str(p)])) == []


def test_blocking_dirs_on_real_directories(tmp_path):
    closed = tmp_path / "private"
    inner = closed / "clone" / ".stack"
    inner.mkdir(parents=True)
    os.chmod(tmp_path, 0o755)
    closed.chmod(0o700)
    nobody = 65534
    blocked = manager.blocking_dirs(inner, nobody, {nobody})
    assert closed in blocked and inner not in blocked
    closed.chmod(0o711)
    assert closed not in manager.blocking_dirs(inner, nobody, {nobody})


def test_the_stack_dir_is_used_when_reachable_else_one_folder_per_stack_dir_under_var_tmp():
    stack = Path("/work/a/.stack")
    assert manager.choose_postgres_home(stack, []) == stack / "postgres"
    moved = manager.choose_postgres_home(stack, [Path("/work")])
    assert moved.parent == Path("/var/tmp") and moved.name.startswith("lupita-postgres-")
    assert moved == manager.choose_postgres_home(stack, [Path("/work/a")])  # deterministic
    assert moved != manager.choose_postgres_home(Path("/work/b/.stack"), [Path("/work")])


@pytest.fixture
def private_stack(tmp_path, monkeypatch):
    """A stack dir inside a 0700 directory, the postgres user played by uid 101 (groups {104})."""
    stack = tmp_path / "private" / "clone" / ".stack"
    stack.mkdir(parents=True)
    (tmp_path / "private").chmod(0o700)
    monkeypatch.setenv("LUPITA_STACK_DIR", str(stack))
    monkeypatch.setattr(manager, "_postgres_ids", lambda: (PG_UID, 104, PG_GROUPS))
    return stack


def test_a_database_already_inside_an_unreachable_stack_dir_fails_at_once_saying_what_to_do(private_stack):
    (private_stack / "postgres" / "data").mkdir(parents=True)
    (private_stack / "postgres" / "data" / "PG_VERSION").write_text("15\n")
    with pytest.raises(RuntimeError) as err:
        manager._prepare_postgres_home()
    message = str(err.value)
    assert "which cannot enter" in message and f"{private_stack.parents[1]} " in message
    assert "chmod o+x" in message and "LUPITA_STACK_DIR" in message
    assert str(private_stack / "postgres.json") in message
    assert not (private_stack / "postgres.json").exists()


def test_the_relocated_home_is_never_taken_over_from_another_owner_or_through_a_link(
    private_stack, tmp_path, monkeypatch
):
    base = tmp_path / "var-tmp"
    base.mkdir(mode=0o755)
    # here root plays the postgres user, so that it reaches base (under pytest's 0700 tmp dir)
    monkeypatch.setattr(manager, "_postgres_ids", lambda: (0, 0, {0}))
    monkeypatch.setattr(manager, "POSTGRES_FALLBACK_BASE", base)
    monkeypatch.setattr(manager, "postgres_home", lambda: manager.relocated_postgres_home(private_stack))
    home = manager.relocated_postgres_home(private_stack)

    home.symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (tmp_path / "elsewhere").mkdir()
    with pytest.raises(RuntimeError, match="is not a plain directory"):
        manager._prepare_postgres_home()
    home.unlink()

    home.mkdir()
    os.chown(home, 4242, 4242)
    with pytest.raises(RuntimeError, match="belongs to uid 4242"):
        manager._prepare_postgres_home()
    assert not (private_stack / "postgres.json").exists()


# --------------------------------------------------------------------------- the real scenario


def _free_offset() -> int:
    for offset in range(300, 1000, 7):
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", 15432 + offset)) != 0:
                return offset
    raise AssertionError("no free Postgres port between 15732 and 16432")


def _copy_working_tree(dest: Path) -> None:
    """What a clone would hold, plus this working tree's uncommitted changes."""
    names = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO, capture_output=True, check=True,
    ).stdout.decode().split("\0")
    for name in filter(None, names):
        src = REPO / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)


@pytest.mark.stack
@pytest.mark.timeout(120)
def test_stack_up_postgres_from_a_clone_inside_a_0700_directory():
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        pytest.fail("the postgres user is missing: run `bash scripts/setup.sh` first")
    parent = Path(tempfile.mkdtemp(prefix="lupita-0700-"))  # mkdtemp makes it mode 0700
    clone = parent / "clone"
    offset = _free_offset()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LUPITA_")}
    env.update(
        PYTHONPATH=str(clone / "services"),
        LUPITA_STACK_PORT_OFFSET=str(offset),
        LUPITA_CACHE_DIR=os.environ.get("LUPITA_CACHE_DIR", str(Path.home() / ".cache" / "lupita")),
    )

    def lupita(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "lupita.cli", *args], cwd=clone, env=env,
                              capture_output=True, text=True, timeout=90)

    home = None
    try:
        assert stat.S_IMODE(parent.stat().st_mode) == 0o700
        clone.mkdir()
        _copy_working_tree(clone)
        # the situation of the issue: the postgres user cannot even enter the clone
        assert subprocess.run(["runuser", "-u", "postgres", "--", "test", "-x", str(clone)],
                              cwd="/").returncode != 0

        up = lupita("stack", "up", "--only", "postgres")
        assert up.returncode == 0, up.stdout + up.stderr
        assert "postgres  healthy" in up.stdout

        record = json.loads((clone / ".stack" / "postgres.json").read_text())
        home = Path(record["home"])
        assert record["stack_dir"] == str((clone / ".stack").resolve())
        assert home.parent == Path("/var/tmp") and home.name.startswith("lupita-postgres-")
        home_st = home.stat()
        assert home_st.st_uid == pwd.getpwnam("postgres").pw_uid
        assert stat.S_IMODE(home_st.st_mode) == 0o700
        assert (home / "data" / "PG_VERSION").exists()

        # the clone's own settings reach its own database, over TCP with its password
        dsn = next(line.split("=", 1)[1] for line in (clone / ".stack" / "env").read_text().splitlines()
                   if line.startswith("LUPITA_POSTGRES_DSN="))
        assert f":{15432 + offset}/" in dsn
        with psycopg.connect(dsn, connect_timeout=10) as conn:
            assert conn.execute("SELECT current_user, current_database()").fetchone() == ("lupita", "lupita")

        again = lupita("stack", "up", "--only", "postgres")  # idempotent, through the unix socket
        assert again.returncode == 0, again.stdout + again.stderr
    finally:
        down = lupita("stack", "down") if clone.exists() else None
        if home is None and (clone / ".stack" / "postgres.json").exists():
            home = Path(json.loads((clone / ".stack" / "postgres.json").read_text())["home"])
        if home is not None and home.parent == Path("/var/tmp"):
            shutil.rmtree(home, ignore_errors=True)
        shutil.rmtree(parent, ignore_errors=True)
    assert down.returncode == 0 and "stopped: postgres" in down.stdout, down.stdout + down.stderr
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", 15432 + offset)) != 0
