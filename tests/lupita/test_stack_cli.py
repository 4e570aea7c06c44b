"""`lupita stack` refuses bad input before touching any server."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from logscan import run_logged

LUPITA = [str(Path(sys.executable).with_name("lupita"))]


def lupita(*args: str, **env: str) -> subprocess.CompletedProcess:
    return run_logged("lupita-stack", [*LUPITA, *args], text=True, timeout=60, env={**os.environ, **env})


@pytest.mark.parametrize("offset", ["abc", "-5", "1.5", "99999"])
def test_a_bad_port_offset_is_refused_naming_the_variable(offset):
    done = lupita("stack", "status", LUPITA_STACK_PORT_OFFSET=offset)
    assert done.returncode == 1
    assert f"LUPITA_STACK_PORT_OFFSET must be a whole number from 0 to 10000, got {offset!r}" in done.stderr


def test_an_unknown_action_or_component_is_a_usage_error():
    bad_action = lupita("stack", "restart")
    assert bad_action.returncode == 2 and "invalid choice: 'restart'" in bad_action.stderr
    bad_component = lupita("stack", "up", "--only", "redis")
    assert bad_component.returncode == 2 and "invalid choice: 'redis'" in bad_component.stderr


def test_up_refuses_servers_another_stack_started_on_its_ports(stack_env, tmp_path):
    # the session's stack answers on these ports; a stack in another directory did not start them
    done = lupita("stack", "up", "--only", "kafka", "postgres", LUPITA_STACK_DIR=str(tmp_path / "other"))
    assert done.returncode == 1, done.stdout + done.stderr
    assert "for kafka answers, but this stack" in done.stderr and "for postgres answers" in done.stderr
    assert "LUPITA_STACK_PORT_OFFSET" in done.stderr and "Traceback" not in done.stderr
