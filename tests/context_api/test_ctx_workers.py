"""``LUPITA_CONTEXT_API_WORKERS=2``: two real worker processes behind one port answer, the parent's
/metrics sums both, only worker 0 runs the dispatcher, and SIGTERM stops all of them with exit 0."""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from ctxkit import ContextApi, message, random_phone

pytestmark = pytest.mark.stack


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie of ours is not running: look at its state
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False


def _listening(server: ContextApi) -> list[dict]:
    return [r for r in server.logs() if r.get("msg") == "context api listening"]


def test_two_workers_answer_share_metrics_and_stop_on_sigterm(migrated):
    server = ContextApi("context-api-workers", {"LUPITA_CONTEXT_API_WORKERS": "2",
                                                "LUPITA_CONTEXT_API_CALLBACKS_POLL_INTERVAL_SECONDS": "0.5"})
    server.start()
    try:
        deadline = time.monotonic() + 60
        while len(_listening(server)) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        listening = _listening(server)
        assert sorted(r["worker"] for r in listening) == [0, 1]
        assert len({r["port"] for r in listening}) == 1  # one port

        phone = random_phone()
        sent = 0

        def one(_: int) -> int:
            with httpx.Client(base_url=server.url, timeout=10) as c:  # a new connection each time
                r = c.post("/vapi/webhook", json=message("assistant-request", phone),
                           headers={"authorization": f"Bearer {server.token}"})
                return r.status_code

        served: set[int] = set()
        deadline = time.monotonic() + 60
        with ThreadPoolExecutor(8) as pool:
            while served != {0, 1} and time.monotonic() < deadline:
                codes = list(pool.map(one, range(16)))
                assert codes == [200] * 16
                sent += 16
                served = {r["worker"] for r in server.logs() if r.get("msg") == "assistant-request answered"}
        assert served == {0, 1}, "one worker answered everything"
        # the parent's /metrics is the sum over both workers
        assert server.metric("lupita_context_api_webhook_messages_total", type="assistant-request") == sent
        assert server.metric("lupita_context_api_assistant_request_seconds_count") == sent
        assert server.metric("lupita_context_api_callbacks_due_backlog") >= 0
        # only worker 0 dispatches callbacks and sweeps erasures
        background = {r["worker"]: (r["callbacks_dispatcher"], r["erasure_sweeper"])
                      for r in server.logs() if r.get("msg") == "context api background tasks"}
        assert background == {0: (True, True), 1: (False, False)}
        worker_pids = _worker_pids(server.proc.pid)
        assert len(worker_pids) == 2
    finally:
        rc = server.stop()
    assert rc == 0
    logs = server.logs()
    assert sorted(r["worker"] for r in logs if r.get("msg") == "context api stopped") == [0, 1]
    assert any(r.get("msg") == "context api workers stopped" and r.get("rc") == 0 for r in logs)
    assert not any(_alive(pid) for pid in worker_pids)
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{server.url}/livez", timeout=2)


def _worker_pids(parent: int) -> list[int]:
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    fields = f.read().split(") ", 1)[1].split()
            except (FileNotFoundError, IndexError):
                continue
            if int(fields[1]) == parent:
                out.append(int(name))
    return out


def test_a_worker_that_dies_stops_the_service_with_exit_1(migrated):
    server = ContextApi("context-api-workers-crash", {"LUPITA_CONTEXT_API_WORKERS": "2"})
    server.start()
    try:
        deadline = time.monotonic() + 60
        while len(_listening(server)) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        pids = _worker_pids(server.proc.pid)
        assert len(pids) == 2
        os.kill(pids[1], 9)
        server.proc.wait(60)
    finally:
        server.stop()
    assert server.proc.returncode == 1
    assert any(r.get("msg") == "context api worker exited" and r.get("rc") == -9 for r in server.logs())
    assert not any(_alive(pid) for pid in pids)


def test_the_shared_listener_makes_tcp_nodelay_connections():
    """asyncio sets TCP_NODELAY on an accepted socket only when its proto is TCP; the listener is
    created so (and sets it itself), or every small answer waits for the client's delayed ACK."""
    import socket

    from context_api.workers import _listen

    sock = _listen("127.0.0.1", 0)
    try:
        assert sock.proto == socket.IPPROTO_TCP
        client = socket.create_connection(sock.getsockname())
        conn, _ = sock.accept()
        try:
            assert conn.proto == socket.IPPROTO_TCP
            assert conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        finally:
            conn.close()
            client.close()
    finally:
        sock.close()


def test_a_taken_port_stops_the_workers_parent_with_exit_1_and_a_log_line(migrated):
    import socket
    import subprocess
    import sys

    from ctxkit import ASSISTANT_ID
    from procs import ROOT

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    try:
        env = dict(os.environ, LUPITA_CONTEXT_API_ASSISTANT_ID=ASSISTANT_ID, LUPITA_CONTEXT_API_BEARER_TOKENS="t" * 24,
                   LUPITA_CONTEXT_API_WORKERS="2")
        out = subprocess.run([sys.executable, "-m", "lupita.cli", "context-api", "--host", "127.0.0.1", "--port",
                              str(taken.getsockname()[1]), "--metrics-port", "0"], env=env, cwd=ROOT,
                             capture_output=True, text=True, timeout=60)
    finally:
        taken.close()
    assert out.returncode == 1
    assert '"msg": "context api did not start"' in out.stdout and "Traceback" not in out.stdout + out.stderr
