"""Install the local stack's servers from package registries into a cache folder.

Nothing here is committed to the repo: Kafka comes as jars from Maven Central, MinIO and
Weaviate are built from their Go modules, PostgreSQL and kcat/espeak-ng/sox come from
Debian. Everything lands in ``$LUPITA_CACHE_DIR`` (default ``~/.cache/lupita``), outside
the work tree, so a fresh clone on the same machine starts warm.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import textwrap
import time
from pathlib import Path

KAFKA_VERSION = "3.9.1"
SCALA_VERSION = "2.13"
SLF4J_VERSION = "1.7.36"
MINIO_MODULE = "github.com/minio/minio@v0.0.0-20260212201848-7aac2a2c5b7c"  # newest commit on the module proxy
WEAVIATE_MODULE = "github.com/weaviate/weaviate/cmd/weaviate-server@v1.39.0"
PG_MAJOR = "15"
DEBIAN_PACKAGES = {
    # command that must exist -> Debian package providing it
    "kcat": "kcat",
    "espeak-ng": "espeak-ng",
    "sox": "sox",
    f"/usr/lib/postgresql/{PG_MAJOR}/bin/postgres": f"postgresql-{PG_MAJOR}",
}


def cache_dir() -> Path:
    path = Path(os.environ.get("LUPITA_CACHE_DIR", Path.home() / ".cache" / "lupita"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def say(msg: str) -> None:
    print(f"[stack] {msg}", flush=True)


def _run_logged(cmd: list[str], log: Path, env: dict[str, str] | None = None, what: str = "") -> None:
    """Run a slow install step, printing a heartbeat so the first install never looks stuck."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        started = time.monotonic()
        while proc.poll() is None:
            time.sleep(1)
            elapsed = int(time.monotonic() - started)
            if elapsed and elapsed % 30 == 0:
                say(f"  ... still {what or cmd[0]} ({elapsed}s, log: {log})")
    if proc.returncode != 0:
        tail = log.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"{what or cmd[0]} failed (exit {proc.returncode}); log {log}:\n{tail}")


def ensure_debian_packages() -> None:
    missing = sorted(
        {pkg for cmd, pkg in DEBIAN_PACKAGES.items() if not (shutil.which(cmd) or Path(cmd).exists())}
    )
    if not missing:
        return
    if os.geteuid() != 0:
        raise RuntimeError(f"missing Debian packages {missing}: run `sudo apt-get install {' '.join(missing)}`")
    say(f"installing Debian packages: {', '.join(missing)}")
    log = cache_dir() / "logs" / "apt.log"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    _run_logged(["apt-get", "update"], log, env, "apt-get update")
    _run_logged(["apt-get", "install", "-y", "--no-install-recommends", *missing], log, env, "apt-get install")


def go_binary(name: str, module: str) -> Path:
    """Build ``module`` with ``go install`` into the cache's bin/ unless already there."""
    bindir = cache_dir() / "bin"
    binary = bindir / name
    if binary.exists():
        return binary
    go = shutil.which("go")
    if not go:
        raise RuntimeError("Go toolchain not found: needed to build " + module)
    say(f"building {name} from its Go module {module} (first time only: several minutes)")
    env = dict(os.environ, GOBIN=str(bindir), CGO_ENABLED="0", GOFLAGS="-trimpath")
    started = time.monotonic()
    _run_logged([go, "install", module], cache_dir() / "logs" / f"{name}-build.log", env, f"building {name}")
    say(f"built {name} in {time.monotonic() - started:.0f}s")
    return binary


def kafka_libs() -> Path:
    """Kafka broker jars (KRaft) from Maven Central via a throw-away pom."""
    home = cache_dir() / f"kafka-{SCALA_VERSION}-{KAFKA_VERSION}"
    libs = home / "libs"
    marker = home / ".complete"
    if marker.exists():
        return libs
    mvn = shutil.which("mvn")
    if not mvn:
        raise RuntimeError("Maven (mvn) not found: needed to fetch the Kafka jars from Maven Central")
    say(f"fetching Apache Kafka {KAFKA_VERSION} jars from Maven Central")
    home.mkdir(parents=True, exist_ok=True)
    (home / "pom.xml").write_text(
        textwrap.dedent(
            f"""\
            <project xmlns="http://maven.apache.org/POM/4.0.0">
              <modelVersion>4.0.0</modelVersion>
              <groupId>lupita.local</groupId><artifactId>kafka-runtime</artifactId><version>1</version>
              <dependencies>
                <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_{SCALA_VERSION}</artifactId><version>{KAFKA_VERSION}</version></dependency>
                <dependency><groupId>org.slf4j</groupId><artifactId>slf4j-reload4j</artifactId><version>{SLF4J_VERSION}</version></dependency>
              </dependencies>
            </project>
            """
        )
    )
    _run_logged(
        [mvn, "-q", "-B", "-f", str(home / "pom.xml"), "dependency:copy-dependencies",
         "-DincludeScope=runtime", f"-DoutputDirectory={libs}"],
        cache_dir() / "logs" / "kafka-maven.log",
        what="maven dependency:copy-dependencies",
    )
    marker.touch()
    return libs


def pg_bindir() -> Path:
    return Path(f"/usr/lib/postgresql/{PG_MAJOR}/bin")


INSTALLERS = {
    "kafka": kafka_libs,
    "postgres": pg_bindir,
    "minio": lambda: go_binary("minio", MINIO_MODULE),
    "weaviate": lambda: go_binary("weaviate-server", WEAVIATE_MODULE),
}


def install_all(components: tuple[str, ...] = tuple(INSTALLERS)) -> dict[str, Path]:
    """What the given components run, installed once (cached); returns their binaries."""
    ensure_debian_packages()
    return {name: INSTALLERS[name]() for name in components}
