"""The local cluster's binaries, built once from their registry packages and cached.

No image registry or release download is reachable here, so every tool comes from a
package registry: helm and kwok with ``go install``, Kubernetes from its Go module through
a small wrapper module (its own go.mod has ``./staging`` replace directives that make a
plain ``go install`` refuse it), etcd from its server module (a wrapper too). Everything lands in
``$LUPITA_CACHE_DIR/k8s`` (default ``~/.cache/lupita/k8s``), outside the work tree.

``ensure(name)`` is safe to call from several processes at once (pytest-xdist workers, a
second terminal): builds run under a file lock and binaries appear by atomic rename, so a
caller either finds a complete binary or waits for the one building it.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

KUBERNETES_VERSION = "v1.34.2"
STAGING_VERSION = "v0.34.2"  # the published k8s.io/<staging module> tags of that release
HELM_MODULE = "helm.sh/helm/v3/cmd/helm@v3.22.0"
KWOK_VERSION = "v0.8.0"
KWOK_MODULE = f"sigs.k8s.io/kwok/cmd/kwok@{KWOK_VERSION}"
# etcd 3.6 (what Kubernetes 1.34 is tested with): Debian's 3.4 cannot answer the progress
# requests of client-go's streaming lists, so every informer's watch fails and falls back
# and controllers (kwok among them) see changes seconds late
ETCD_VERSION = "v3.6.16"
ETCD_MODULE = "go.etcd.io/etcd/server/v3"

# the Kubernetes binaries, built in two groups: what the kwok cluster needs, then the node
KUBE_CONTROL_PLANE = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl")
KUBE_NODE = ("kubelet", "kube-proxy")
# binary -> its main package's folder in the k8s.io/kubernetes module
KUBE_MAIN_DIRS = {name: f"cmd/{name}" for name in KUBE_CONTROL_PLANE + KUBE_NODE}

GO_INSTALLED = {"helm": HELM_MODULE, "kwok": KWOK_MODULE}
TOOLS = (*GO_INSTALLED, *KUBE_CONTROL_PLANE, *KUBE_NODE, "etcd")


def cache_dir() -> Path:
    """``$LUPITA_CACHE_DIR/k8s``: shared with the stack's cache root, never in the repo."""
    root = Path(os.environ.get("LUPITA_CACHE_DIR", Path.home() / ".cache" / "lupita"))
    path = root / "k8s"
    path.mkdir(parents=True, exist_ok=True)
    return path


def bin_dir() -> Path:
    path = cache_dir() / "bin"
    path.mkdir(parents=True, exist_ok=True)
    return path


def log_dir() -> Path:
    path = cache_dir() / "logs"
    path.mkdir(parents=True, exist_ok=True)
    return path


def say(msg: str) -> None:
    print(f"[cluster] {msg}", flush=True)


@contextmanager
def _locked(name: str) -> Iterator[None]:
    """An exclusive lock per build group, held across processes (flock is released on exit)."""
    lockdir = cache_dir() / "locks"
    lockdir.mkdir(exist_ok=True)
    with (lockdir / f"{name}.lock").open("w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say(f"waiting for another process that is building {name}")
            fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def _run_logged(cmd: list[str], log: Path, *, what: str, env: dict[str, str] | None = None,
                cwd: Path | None = None) -> float:
    """Run a slow build step with its output in ``log`` and a heartbeat on the terminal.

    Returns the CPU seconds the step used (it and every process it waited for: ``wait4``'s
    rusage), which says what a step costs on a busy machine better than its wall time; each
    step's wall and CPU time and the load average go to ``logs/build-times.log``."""
    with log.open("ab") as out:
        out.write(f"\n$ {' '.join(cmd)}\n".encode())
        out.flush()
        load_before = os.getloadavg()[0]
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd)
        started = time.monotonic()
        next_beat = 60.0
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                proc.returncode = os.waitstatus_to_exitcode(status)
                break
            time.sleep(1)
            if time.monotonic() - started >= next_beat:
                say(f"  ... still {what} ({next_beat:.0f}s, log: {log})")
                next_beat += 60
    wall = time.monotonic() - started
    cpu = usage.ru_utime + usage.ru_stime
    with (log_dir() / "build-times.log").open("a") as times:
        times.write(f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} {what}: {wall:.0f} s wall, "
                    f"{cpu:.0f} CPU-s, load average {load_before:.1f} -> {os.getloadavg()[0]:.1f}, "
                    f"exit {proc.returncode}\n")
    if proc.returncode != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"{what} failed (exit {proc.returncode}); log {log}:\n{tail}")
    return cpu


def _go() -> str:
    go = shutil.which("go") or ("/usr/local/go/bin/go" if Path("/usr/local/go/bin/go").exists() else None)
    if not go:
        raise RuntimeError("the Go toolchain is not installed: it builds helm, kwok and Kubernetes")
    return go


def _go_env(**extra: str) -> dict[str, str]:
    return dict(os.environ, CGO_ENABLED="0", GOFLAGS="-trimpath -buildvcs=false", **extra)


def _build_go_install(name: str) -> None:
    module = GO_INSTALLED[name]
    with tempfile.TemporaryDirectory(dir=cache_dir()) as tmp:
        _run_logged([_go(), "install", "-ldflags=-s -w", module], log_dir() / f"{name}-build.log",
                    what=f"building {name}", env=_go_env(GOBIN=tmp))
        os.replace(Path(tmp) / name, bin_dir() / name)


def module_dir(module_at_version: str) -> Path:
    """The extracted source of a module from the Go module proxy (``go mod download``)."""
    out = subprocess.run([_go(), "mod", "download", "-json", module_at_version],
                         capture_output=True, text=True, env=_go_env(), cwd=cache_dir())
    info = json.loads(out.stdout or "{}")
    if out.returncode != 0 or "Dir" not in info:
        raise RuntimeError(f"go mod download {module_at_version} failed: {info.get('Error') or out.stderr}")
    return Path(info["Dir"])


def _kube_wrapper() -> Path:
    """A module that builds Kubernetes' commands against the published staging modules."""
    src = cache_dir() / "src" / f"kubernetes-{KUBERNETES_VERSION}"
    if (src / ".complete").exists():
        return src
    upstream = module_dir(f"k8s.io/kubernetes@{KUBERNETES_VERSION}")
    # the module zip leaves staging/ out (each is its own module): read the names from go.mod
    staging = sorted(set(re.findall(r"^\s*k8s\.io/(\S+) => \./staging/", (upstream / "go.mod").read_text(), re.M)))
    if not staging:
        raise RuntimeError(f"no ./staging replace directives found in {upstream / 'go.mod'}")
    src.mkdir(parents=True, exist_ok=True)
    replaces = "\n".join(f"\tk8s.io/{name} => k8s.io/{name} {STAGING_VERSION}" for name in staging)
    (src / "go.mod").write_text(
        "// generated by lupita_dev.cluster.tools: Kubernetes' commands against its published modules\n"
        "module lupita.local/kubernetes\n\ngo 1.24.0\n\n"
        f"require k8s.io/kubernetes {KUBERNETES_VERSION}\n\nreplace (\n{replaces}\n)\n"
    )
    for name, main_dir in KUBE_MAIN_DIRS.items():
        dest = src / "cmd" / name
        dest.mkdir(parents=True, exist_ok=True)
        for go_file in (upstream / main_dir).glob("*.go"):
            if not go_file.name.endswith("_test.go"):
                (dest / go_file.name).write_bytes(go_file.read_bytes())
    _run_logged([_go(), "mod", "tidy"], log_dir() / "kubernetes-build.log",
                what="resolving the Kubernetes modules", env=_go_env(), cwd=src)
    (src / ".complete").touch()
    return src


def _kube_ldflags() -> str:
    major, minor = KUBERNETES_VERSION.lstrip("v").split(".")[:2]
    values = {"gitVersion": KUBERNETES_VERSION, "gitMajor": major, "gitMinor": minor,
              "gitTreeState": "clean", "buildDate": "1970-01-01T00:00:00Z"}
    flags = ["-s", "-w"]
    for pkg in ("k8s.io/client-go/pkg/version", "k8s.io/component-base/version"):
        flags += [f"-X {pkg}.{key}={value}" for key, value in values.items()]
    return " ".join(flags)


def _build_kubernetes(names: tuple[str, ...]) -> None:
    src = _kube_wrapper()
    with tempfile.TemporaryDirectory(dir=cache_dir()) as tmp:
        _run_logged([_go(), "build", "-ldflags", _kube_ldflags(), "-o", tmp + "/",
                     *(f"./cmd/{name}" for name in names)],
                    log_dir() / "kubernetes-build.log", what=f"building {', '.join(names)}",
                    env=_go_env(), cwd=src)
        for name in names:
            os.replace(Path(tmp) / name, bin_dir() / name)


def _build_etcd() -> None:
    """etcd from its server module through a five-line wrapper (``etcdmain.Main``)."""
    src = cache_dir() / "src" / f"etcd-{ETCD_VERSION}"
    log = log_dir() / "etcd-build.log"
    if not (src / ".complete").exists():
        src.mkdir(parents=True, exist_ok=True)
        (src / "go.mod").write_text(f"module lupita.local/etcd\n\ngo 1.24.0\n\nrequire {ETCD_MODULE} {ETCD_VERSION}\n")
        (src / "main.go").write_text(
            "// generated by lupita_dev.cluster.tools: the etcd server command\n"
            "package main\n\nimport (\n\t\"os\"\n\n\t\"go.etcd.io/etcd/server/v3/etcdmain\"\n)\n\n"
            "func main() { etcdmain.Main(os.Args) }\n")
        _run_logged([_go(), "mod", "tidy"], log, what="resolving the etcd modules", env=_go_env(), cwd=src)
        (src / ".complete").touch()
    with tempfile.TemporaryDirectory(dir=cache_dir()) as tmp:
        _run_logged([_go(), "build", "-ldflags=-s -w", "-o", f"{tmp}/etcd", "."], log,
                    what="building etcd", env=_go_env(), cwd=src)
        os.replace(Path(tmp) / "etcd", bin_dir() / "etcd")


def _group(name: str) -> tuple[str, tuple[str, ...]]:
    """The build group a tool belongs to: (lock name, every binary the group's build makes)."""
    if name in KUBE_CONTROL_PLANE:
        return "kubernetes", KUBE_CONTROL_PLANE
    if name in KUBE_NODE:
        return "kubernetes", KUBE_NODE
    if name in TOOLS:
        return name, (name,)
    raise ValueError(f"unknown cluster tool {name!r}; known: {', '.join(TOOLS)}")


def ensure(name: str, *, with_group: tuple[str, ...] = ()) -> Path:
    """The cached binary ``name`` (helm, kwok, kubectl, kube-apiserver, etcd, ...), built if missing.

    ``with_group``: other Kubernetes binaries to build in the same ``go build`` when ``name``'s
    group is built (one compile of the shared packages and a parallel link instead of two runs)."""
    lock, members = _group(name)
    binary = bin_dir() / name
    if binary.exists():
        return binary
    with _locked(lock):
        if binary.exists():  # another process built it while we waited
            return binary
        started = time.monotonic()
        if name in GO_INSTALLED:
            say(f"building {name} from {GO_INSTALLED[name]} (first time only: a few minutes, "
                f"log: {log_dir() / (name + '-build.log')})")
            _build_go_install(name)
        elif name == "etcd":
            say(f"building etcd {ETCD_VERSION} from {ETCD_MODULE} (first time only: a few minutes, "
                f"log: {log_dir() / 'etcd-build.log'})")
            _build_etcd()
        else:
            wanted = dict.fromkeys((*members, *(m for m in with_group if m in KUBE_MAIN_DIRS)))
            missing = tuple(m for m in wanted if not (bin_dir() / m).exists())
            say(f"building Kubernetes {KUBERNETES_VERSION} {', '.join(missing)} from the Go module proxy "
                f"(first time only: ~10 minutes on 2 cores, log: {log_dir() / 'kubernetes-build.log'})")
            _build_kubernetes(missing)
        say(f"{name} ready in {time.monotonic() - started:.0f}s: {binary}")
    return binary


def ensure_all(names: tuple[str, ...] = TOOLS) -> dict[str, Path]:
    """Every tool of ``names``; the Kubernetes ones among them in one ``go build``."""
    kube = tuple(n for n in names if n in KUBE_MAIN_DIRS)
    return {name: ensure(name, with_group=kube) for name in names}
