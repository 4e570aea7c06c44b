"""The service images, built for real with rootful podman from ``services/*/Dockerfile``.

No image registry is reachable here, so the Python base the Dockerfiles start FROM is made
locally: ``debootstrap --variant=minbase bookworm`` with python3 (3.11) and python3-venv,
imported into podman as ``localhost/lupita-python:3.11-bookworm``. It also carries this
machine's extra CA certificates (package downloads go through a TLS-inspecting proxy),
which is why it is made on each machine and never pushed anywhere. Elsewhere the same
Dockerfiles build FROM the official ``python:3.11-slim-bookworm`` (their default
``PYTHON_IMAGE``).

podman's defaults fail on this machine (crun and cgroups v1 hybrid, the nofile rlimit):
``containers.conf`` under the cache dir (passed as ``CONTAINERS_CONF``) selects runc,
cgroupfs and rlimits the machine allows (see ENVIRONMENT.md, "Containers and Kubernetes").
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from lupita_dev.stack.manager import ROOT

from . import tools
from .tools import say

BASE_IMAGE = "localhost/lupita-python:3.11-bookworm"
DEBIAN_SUITE = "bookworm"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
# what the official python:3.11-slim image offers the Dockerfiles: python (3.11), venv + pip,
# useradd/groupadd, CA certificates
BASE_PACKAGES = ("python3", "python3-venv", "python-is-python3", "passwd", "ca-certificates")
TAG = "dev"  # the tag charts/lupita/values-local.yaml runs


@dataclass(frozen=True)
class Image:
    name: str
    dockerfile: str
    build_args: tuple[tuple[str, str], ...] = ()

    @property
    def ref(self) -> str:
        return f"localhost/{self.name}:{TAG}"


LUPITA_BASE = Image("lupita-base", "services/lupita/Dockerfile", (("PYTHON_IMAGE", BASE_IMAGE),))
_FROM_BASE = (("BASE", LUPITA_BASE.ref),)
SERVICES = (
    Image("lupita-media-bridge", "services/media_bridge/Dockerfile", _FROM_BASE),
    Image("lupita-stream-processor", "services/stream_processor/Dockerfile", _FROM_BASE),
    Image("lupita-context-api", "services/context_api/Dockerfile", _FROM_BASE),
    Image("lupita-loadgen", "services/loadgen/Dockerfile", _FROM_BASE),
    Image("lupita-telephony-gateway", "services/telephony_gateway/Dockerfile", _FROM_BASE),
)
IMAGES = {img.name: img for img in (LUPITA_BASE, *SERVICES)}

CONTAINERS_CONF = """\
# written by lupita_dev.cluster.images: podman's defaults fail on this machine
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
"""

DEBIAN_TOOLS = {"podman": "podman", "debootstrap": "debootstrap", "runc": "runc", "buildah": "buildah"}


def ensure_debian_tools() -> None:
    missing = sorted({pkg for cmd, pkg in DEBIAN_TOOLS.items() if not shutil.which(cmd)})
    if not missing:
        return
    if os.geteuid() != 0:
        raise RuntimeError(f"missing Debian packages {missing}: run `sudo apt-get install {' '.join(missing)}`")
    say(f"installing Debian packages: {', '.join(missing)}")
    subprocess.run(["apt-get", "-o", "DPkg::Lock::Timeout=900", "install", "-y", "--no-install-recommends", *missing], check=True,
                   env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"), stdout=subprocess.DEVNULL)


def podman_env() -> dict[str, str]:
    conf = tools.cache_dir() / "podman" / "containers.conf"
    conf.parent.mkdir(parents=True, exist_ok=True)
    if not conf.exists() or conf.read_text() != CONTAINERS_CONF:
        conf.write_text(CONTAINERS_CONF)
    return dict(os.environ, CONTAINERS_CONF=str(conf))


def podman(*args: str, check: bool = True, capture: bool = True, **kw) -> subprocess.CompletedProcess:
    if os.geteuid() != 0:
        raise RuntimeError("the images are built with rootful podman: run as root")
    out = subprocess.run(["podman", *args], env=podman_env(), text=True,
                         capture_output=capture, **kw)
    if check and out.returncode != 0:
        raise RuntimeError(f"podman {' '.join(args[:3])} failed (exit {out.returncode}): "
                           f"{(out.stderr or '')[-2000:]}")
    return out


def image_exists(ref: str) -> bool:
    return podman("image", "exists", ref, check=False).returncode == 0


def image_size(ref: str) -> int:
    return int(podman("image", "inspect", "--format", "{{.Size}}", ref).stdout.strip())


def ensure_base_image(rebuild: bool = False) -> str:
    """The local Debian bookworm Python base (debootstrap minbase), imported once."""
    ensure_debian_tools()
    if image_exists(BASE_IMAGE) and not rebuild:
        return BASE_IMAGE
    with tools._locked("base-image"):
        if image_exists(BASE_IMAGE) and not rebuild:
            return BASE_IMAGE
        log = tools.log_dir() / "base-image.log"
        say(f"making {BASE_IMAGE} with debootstrap (first time only: about a minute, log: {log})")
        started = time.monotonic()
        with tempfile.TemporaryDirectory(dir=tools.cache_dir(), prefix="rootfs-") as tmp:
            rootfs = Path(tmp) / "rootfs"
            tools._run_logged(["debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}",
                               DEBIAN_SUITE, str(rootfs), DEBIAN_MIRROR], log, what="debootstrap")
            _trust_machine_cas(rootfs, log)
            (rootfs / "etc/apt/sources.list").write_text(
                f"deb {DEBIAN_MIRROR} {DEBIAN_SUITE} main\n"
                f"deb {DEBIAN_MIRROR} {DEBIAN_SUITE}-updates main\n"
                f"deb {DEBIAN_MIRROR}-security {DEBIAN_SUITE}-security main\n")
            for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
                for item in (rootfs / junk).glob("*"):
                    if item.is_file():
                        item.unlink()
            tar = subprocess.Popen(["tar", "--numeric-owner", "-C", str(rootfs), "-c", "."],
                                   stdout=subprocess.PIPE)
            try:
                podman("import", "--change", 'CMD ["python3"]', "--change", "ENV LANG=C.UTF-8",
                       "-", BASE_IMAGE, stdin=tar.stdout)
            finally:
                tar.stdout.close()
                tar.wait()
        say(f"{BASE_IMAGE} made in {time.monotonic() - started:.0f}s")
    return BASE_IMAGE


def _trust_machine_cas(rootfs: Path, log: Path) -> None:
    """This machine's extra CAs (its TLS-inspecting proxy) for apt and pip inside builds."""
    extra = sorted(Path("/usr/local/share/ca-certificates").glob("*.crt"))
    if not extra:
        return
    dest = rootfs / "usr/local/share/ca-certificates"
    dest.mkdir(parents=True, exist_ok=True)
    for crt in extra:
        shutil.copy2(crt, dest / crt.name)
    tools._run_logged(["chroot", str(rootfs), "update-ca-certificates"], log, what="update-ca-certificates")
    # pip's own bundle (certifi) does not know them: point it at the system bundle
    (rootfs / "etc/pip.conf").write_text("[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n")


@dataclass
class BuildResult:
    image: str
    seconds: float
    size_bytes: int


def build(names: tuple[str, ...] | None = None) -> list[BuildResult]:
    """Build the base and the service images (podman's layer cache makes a rebuild quick)."""
    ensure_base_image()
    wanted = [LUPITA_BASE, *SERVICES] if not names else [IMAGES[n] for n in names]
    if any(img is not LUPITA_BASE for img in wanted) and LUPITA_BASE not in wanted \
            and not image_exists(LUPITA_BASE.ref):
        wanted.insert(0, LUPITA_BASE)
    results = []
    # one build at a time per machine (the background prebuild, a test, a second checkout): the
    # later one waits, then finds every layer in podman's cache
    with tools._locked("images"):
        for img in wanted:
            log = tools.log_dir() / f"image-{img.name}.log"
            say(f"building {img.ref} from {img.dockerfile} (log: {log})")
            started = time.monotonic()
            args = ["build", "--network", "host", "--layers", "-f", img.dockerfile, "-t", img.ref]
            for key, value in img.build_args:
                args += ["--build-arg", f"{key}={value}"]
            tools._run_logged(["podman", *args, str(ROOT)], log, what=f"building {img.name}",
                              env=podman_env(), cwd=ROOT)
            results.append(BuildResult(img.ref, time.monotonic() - started, image_size(img.ref)))
            say(f"{img.ref}: {results[-1].seconds:.0f}s, {results[-1].size_bytes / 1e6:.0f} MB")
    return results
