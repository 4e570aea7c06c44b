"""The local stack: real Kafka (KRaft), PostgreSQL, Weaviate and MinIO as plain local processes.

``up()`` installs what is missing (see :mod:`lupita_dev.stack.install`), starts every server on
127.0.0.1 with its data and logs under ``$LUPITA_STACK_DIR`` (default ``<repo>/.stack``),
waits for each health check, prepares the database and the S3 buckets, and writes
``<stack dir>/env`` with the ``LUPITA_*`` settings every service reads (Postgres' data goes
outside the stack dir when its user cannot enter it: see ``postgres_home``). It is idempotent: a
second ``up()`` finds everything healthy and returns at once. ``down()`` stops every process
it started.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import pwd
import secrets
import signal
import socket
import stat
import subprocess
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

from . import install
from .install import say

ROOT = Path(__file__).resolve().parents[3]

# LUPITA_STACK_PORT_OFFSET shifts every port, so a second checkout can run its own stack beside.
def _port_offset() -> int:
    raw = os.environ.get("LUPITA_STACK_PORT_OFFSET", "0").strip() or "0"
    if not raw.isdigit() or int(raw) > 10000:
        raise SystemExit(f"LUPITA_STACK_PORT_OFFSET must be a whole number from 0 to 10000, got {raw!r}")
    return int(raw)


PORT_OFFSET = _port_offset()
KAFKA_PORT = 19092 + PORT_OFFSET
KAFKA_CONTROLLER_PORT = 19093 + PORT_OFFSET
POSTGRES_PORT = 15432 + PORT_OFFSET
MINIO_PORT = 19000 + PORT_OFFSET
MINIO_CONSOLE_PORT = 19001 + PORT_OFFSET
WEAVIATE_HTTP_PORT = 18080 + PORT_OFFSET
WEAVIATE_GRPC_PORT = 15051 + PORT_OFFSET
WEAVIATE_GOSSIP_PORT = 17946 + PORT_OFFSET
WEAVIATE_DATA_PORT = 17947 + PORT_OFFSET
WEAVIATE_RAFT_PORT = 18300 + PORT_OFFSET
WEAVIATE_RAFT_RPC_PORT = 18301 + PORT_OFFSET

COMPONENTS = ("kafka", "postgres", "minio", "weaviate")
KMS_KEY_NAME = "lupita-legal-key"


def stack_dir() -> Path:
    path = Path(os.environ.get("LUPITA_STACK_DIR", ROOT / ".stack"))
    path.mkdir(parents=True, exist_ok=True)
    return path


# --------------------------------------------------------------------------- secrets / env


def _new_kafka_cluster_id() -> str:
    """A KRaft cluster id as Kafka's own ``Uuid.randomUuid`` makes them: urlsafe base64 of 16 random
    bytes, drawn again when it starts with "-" (kafka-storage's argument parser reads such an id as
    an option, even as ``--cluster-id=-…``, and refuses to format)."""
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):
            return cid


def _kafka_cluster_id() -> str:
    """This stack's cluster id; one written by an older version that starts with "-" (it could
    never format the storage) is replaced before the first format."""
    values = _secrets()
    if values["kafka_cluster_id"].startswith("-"):
        values["kafka_cluster_id"] = _new_kafka_cluster_id()
        path = stack_dir() / "secrets.json"
        path.write_text(json.dumps(values, indent=2))
        path.chmod(0o600)
    return values["kafka_cluster_id"]


def _secrets() -> dict[str, str]:
    """Dev-only secrets, generated once per stack dir (mode 0600), never committed."""
    path = stack_dir() / "secrets.json"
    if path.exists():
        return json.loads(path.read_text())
    values = {
        "minio_user": "lupita-admin",
        "minio_password": secrets.token_urlsafe(24),
        "kms_key": base64.b64encode(secrets.token_bytes(32)).decode(),
        "postgres_password": secrets.token_urlsafe(24),
        "phone_hmac_key": base64.b64encode(secrets.token_bytes(32)).decode(),
        "phone_encryption_key": base64.b64encode(secrets.token_bytes(32)).decode(),
        "bridge_token": secrets.token_urlsafe(32),
        "kafka_cluster_id": _new_kafka_cluster_id(),
    }
    path.write_text(json.dumps(values, indent=2))
    path.chmod(0o600)
    return values


def stack_env() -> dict[str, str]:
    """The ``LUPITA_*`` settings that point every service at this stack."""
    s = _secrets()
    return {
        "LUPITA_ENVIRONMENT": "local",
        "LUPITA_KAFKA_BOOTSTRAP": f"127.0.0.1:{KAFKA_PORT}",
        "LUPITA_S3_ENDPOINT": f"http://127.0.0.1:{MINIO_PORT}",
        "LUPITA_S3_REGION": "us-east-1",
        "LUPITA_S3_ACCESS_KEY": s["minio_user"],
        "LUPITA_S3_SECRET_KEY": s["minio_password"],
        "LUPITA_S3_KMS_KEY_ID": KMS_KEY_NAME,
        "LUPITA_POSTGRES_DSN": f"postgresql://lupita:{s['postgres_password']}@127.0.0.1:{POSTGRES_PORT}/lupita",
        "LUPITA_WEAVIATE_HOST": "127.0.0.1",
        "LUPITA_WEAVIATE_HTTP_PORT": str(WEAVIATE_HTTP_PORT),
        "LUPITA_WEAVIATE_GRPC_PORT": str(WEAVIATE_GRPC_PORT),
        "LUPITA_PHONE_HMAC_KEY": s["phone_hmac_key"],
        "LUPITA_PHONE_ENCRYPTION_KEY": s["phone_encryption_key"],
        "LUPITA_BRIDGE_TOKENS": s["bridge_token"],
    }


def _write_env_file(env: dict[str, str]) -> Path:
    path = stack_dir() / "env"
    body = "# written by `lupita stack up`: local endpoints and dev-only secrets\n"
    body += "".join(f"{k}={v}\n" for k, v in sorted(env.items()))
    path.write_text(body)
    path.chmod(0o600)
    return path


# --------------------------------------------------------------------------- processes


@dataclass
class Proc:
    name: str
    port: int

    @property
    def pidfile(self) -> Path:
        return stack_dir() / "run" / f"{self.name}.pid"

    @property
    def logfile(self) -> Path:
        return stack_dir() / "logs" / f"{self.name}.log"

    def pid(self) -> int | None:
        try:
            pid = int(self.pidfile.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return pid

    def spawn(self, cmd: list[str], env: dict[str, str] | None = None, user: str | None = None,
              cwd: Path | None = None) -> int:
        self.pidfile.parent.mkdir(parents=True, exist_ok=True)
        self.logfile.parent.mkdir(parents=True, exist_ok=True)
        if user:
            cmd = ["runuser", "-u", user, "--", *cmd]
        with self.logfile.open("ab") as log:
            proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env={**os.environ, **(env or {})}, start_new_session=True, cwd=cwd,
            )
        self.pidfile.write_text(str(proc.pid))
        return proc.pid

    def stop(self, timeout: float = 30.0) -> bool:
        pid = self.pid()
        if pid is None:
            self.pidfile.unlink(missing_ok=True)
            return False
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.pid() is not None:
            time.sleep(0.2)
        if self.pid() is not None:
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.pidfile.unlink(missing_ok=True)
        return True


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return 200 <= resp.status < 300
    except OSError:
        return False


def _wait(what: str, check, proc: Proc, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if proc.pid() is None:
            tail = proc.logfile.read_text(errors="replace")[-3000:] if proc.logfile.exists() else ""
            raise RuntimeError(f"{what} exited during start-up; log {proc.logfile}:\n{tail}")
        time.sleep(0.3)
    raise RuntimeError(f"{what} not healthy after {timeout:.0f}s; see {proc.logfile}")


# --------------------------------------------------------------------------- components

KAFKA = Proc("kafka", KAFKA_PORT)
POSTGRES = Proc("postgres", POSTGRES_PORT)
MINIO = Proc("minio", MINIO_PORT)
WEAVIATE = Proc("weaviate", WEAVIATE_HTTP_PORT)
PROCS = {"kafka": KAFKA, "postgres": POSTGRES, "minio": MINIO, "weaviate": WEAVIATE}


def _kafka_healthy() -> bool:
    if not _port_open(KAFKA_PORT):
        return False
    from kafka.admin import KafkaAdminClient

    try:
        admin = KafkaAdminClient(bootstrap_servers=f"127.0.0.1:{KAFKA_PORT}", request_timeout_ms=3000)
    except Exception:  # noqa: BLE001 - any failure means "not ready yet"
        return False
    try:
        admin.list_topics()
        return True
    except Exception:  # noqa: BLE001
        return False
    finally:
        admin.close()


def _start_kafka(libs: Path) -> None:
    home = stack_dir() / "kafka"
    data = home / "data"
    home.mkdir(parents=True, exist_ok=True)
    props = home / "server.properties"
    props.write_text(
        "\n".join(
            [
                "process.roles=broker,controller",
                "node.id=1",
                f"controller.quorum.voters=1@127.0.0.1:{KAFKA_CONTROLLER_PORT}",
                f"listeners=PLAINTEXT://127.0.0.1:{KAFKA_PORT},CONTROLLER://127.0.0.1:{KAFKA_CONTROLLER_PORT}",
                f"advertised.listeners=PLAINTEXT://127.0.0.1:{KAFKA_PORT}",
                "controller.listener.names=CONTROLLER",
                "inter.broker.listener.name=PLAINTEXT",
                "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
                f"log.dirs={data}",
                "num.partitions=4",
                # single node: every internal topic with replication factor 1
                "offsets.topic.replication.factor=1",
                "offsets.topic.num.partitions=8",
                "transaction.state.log.replication.factor=1",
                "transaction.state.log.min.isr=1",
                "share.coordinator.state.topic.replication.factor=1",
                "share.coordinator.state.topic.min.isr=1",
                "group.initial.rebalance.delay.ms=0",
                "auto.create.topics.enable=false",
                "log.retention.hours=168",
                "log.segment.bytes=67108864",
                "",
            ]
        )
    )
    log4j = home / "log4j.properties"
    log4j.write_text(
        "log4j.rootLogger=INFO, stdout\n"
        "log4j.appender.stdout=org.apache.log4j.ConsoleAppender\n"
        "log4j.appender.stdout.layout=org.apache.log4j.PatternLayout\n"
        "log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n\n"
        "log4j.logger.kafka=INFO\nlog4j.logger.org.apache.kafka=WARN\n"
    )
    java = ["java", "-Xms256m", "-Xmx768m", "-XX:+UseG1GC", "-Djava.awt.headless=true",
            f"-Dlog4j.configuration=file:{log4j}", "-cp", f"{libs}/*"]
    if not (data / "meta.properties").exists():
        say("formatting Kafka storage (KRaft)")
        out = subprocess.run(
            [*java, "kafka.tools.StorageTool", "format", f"--cluster-id={_kafka_cluster_id()}",
             "-c", str(props), "--ignore-formatted"],
            capture_output=True, text=True,
        )
        if out.returncode != 0:
            raise RuntimeError(f"kafka storage format failed:\n{out.stdout}\n{out.stderr}")
    KAFKA.spawn([*java, "kafka.Kafka", str(props)])


def _pg(cmd: str) -> Path:
    return install.pg_bindir() / cmd


# PostgreSQL refuses to run as root, so it runs as the Debian package's `postgres` user, which must
# be able to enter every directory above its data directory. A clone inside a private directory
# (root's home is mode 0700) is not enterable; there Postgres' data directory and unix socket live in
# a folder of its own under /var/tmp instead, named after the stack dir, and recorded in
# <stack dir>/postgres.json so every later command (psql, a second `up`) finds the same one.
POSTGRES_USER = "postgres"
POSTGRES_FALLBACK_BASE = Path("/var/tmp")


def may_traverse(mode: int, owner_uid: int, owner_gid: int, uid: int, gids: set[int]) -> bool:
    """Whether ``uid`` (in groups ``gids``) may enter a directory with these stat fields.

    The kernel's rule: root always; the owner gets the owner bits only; a group member the group
    bits only; everyone else the "other" bits (ACLs are not consulted)."""
    if uid == 0:
        return True
    if uid == owner_uid:
        return bool(mode & stat.S_IXUSR)
    if owner_gid in gids:
        return bool(mode & stat.S_IXGRP)
    return bool(mode & stat.S_IXOTH)


def blocking_dirs(path: Path, uid: int, gids: set[int], stat_fn=os.stat) -> list[Path]:
    """The directories from ``/`` down to ``path`` (an absolute path, itself included) that
    ``uid`` cannot enter; empty when it can reach ``path``."""
    path = Path(path)
    blocked = []
    for directory in [*reversed(path.parents), path]:
        st = stat_fn(directory)
        if not may_traverse(st.st_mode, st.st_uid, st.st_gid, uid, gids):
            blocked.append(directory)
    return blocked


def relocated_postgres_home(stack: Path, base: Path | None = None) -> Path:
    """Postgres' home outside a stack dir its user cannot enter: one per (resolved) stack dir."""
    digest = hashlib.sha256(str(stack).encode()).hexdigest()[:12]
    return (base or POSTGRES_FALLBACK_BASE) / f"lupita-postgres-{digest}"


def choose_postgres_home(stack: Path, blocked: list[Path], base: Path | None = None) -> Path:
    """<stack>/postgres when the postgres user can reach it, else a folder of its own under base."""
    return relocated_postgres_home(stack, base) if blocked else stack / "postgres"


def _postgres_ids() -> tuple[int, int, set[int]]:
    try:
        entry = pwd.getpwnam(POSTGRES_USER)
    except KeyError:
        raise RuntimeError(
            f"user {POSTGRES_USER!r} not found: install PostgreSQL with "
            f"`apt-get install postgresql-{install.PG_MAJOR}`"
        ) from None
    return entry.pw_uid, entry.pw_gid, set(os.getgrouplist(POSTGRES_USER, entry.pw_gid))


def _postgres_record() -> Path:
    return stack_dir() / "postgres.json"


def postgres_home() -> Path:
    """Where this stack's Postgres keeps ``data/`` and its unix socket (see above)."""
    stack = stack_dir().resolve()
    try:
        saved = json.loads(_postgres_record().read_text())
        if saved["stack_dir"] == str(stack):  # a copied stack dir does not share its original's
            return Path(saved["home"])
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        pass
    if (stack / "postgres" / "data" / "PG_VERSION").exists():
        return stack / "postgres"  # a database made before this rule: keep it where it is
    uid, _, gids = _postgres_ids()
    return choose_postgres_home(stack, blocking_dirs(stack, uid, gids))


def _prepare_postgres_home() -> Path:
    """Decide (or reuse) Postgres' home, make it the postgres user's, record it; or fail saying why."""
    stack = stack_dir().resolve()
    home = postgres_home()
    uid, gid, gids = _postgres_ids()
    blocked = " ".join(str(d) for d in blocking_dirs(home.parent, uid, gids))
    inside = home == stack / "postgres"
    if blocked:
        cure = (
            f"let it through (`chmod o+x {blocked}`), or remove {_postgres_record()} and "
            f"{home / 'data'} to start a fresh database outside the stack dir, or"
            if inside else ""
        )
        raise RuntimeError(
            f"PostgreSQL runs as user {POSTGRES_USER!r}, which cannot enter {blocked} on the way to "
            f"its data directory {home / 'data'}: {cure} set LUPITA_STACK_DIR to a directory every "
            "user can enter (e.g. /var/tmp/lupita-stack)"
        )
    if inside:
        home.mkdir(parents=True, exist_ok=True)
        subprocess.run(["chown", "-R", f"{POSTGRES_USER}:{POSTGRES_USER}", str(home)], check=True)
    else:
        # a predictable name in a world-writable folder: never follow a link planted there, and
        # take over only a directory that is already root's or the postgres user's
        try:
            home.mkdir(mode=0o700)
        except FileExistsError:
            pass
        try:
            fd = os.open(home, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        except OSError as exc:
            raise RuntimeError(
                f"{home}, meant for PostgreSQL's data, is not a plain directory ({exc.strerror}): "
                "remove it, or set LUPITA_STACK_DIR to a directory every user can enter "
                "(e.g. /var/tmp/lupita-stack)"
            ) from None
        try:
            owner = os.fstat(fd).st_uid
            if owner not in (0, uid):
                raise RuntimeError(
                    f"{home}, meant for PostgreSQL's data, belongs to uid {owner}, not to "
                    f"{POSTGRES_USER!r}: remove it, or set LUPITA_STACK_DIR to a directory every "
                    "user can enter (e.g. /var/tmp/lupita-stack)"
                )
            os.fchown(fd, uid, gid)
            os.fchmod(fd, 0o700)
        finally:
            os.close(fd)
        say(f"PostgreSQL's data and socket: {home} (user {POSTGRES_USER!r} could not enter {stack}; "
            f"recorded in {_postgres_record()})")
    _postgres_record().write_text(json.dumps({"stack_dir": str(stack), "home": str(home)}, indent=2) + "\n")
    return home


def _psql(sql: str, db: str = "postgres") -> str:
    home = postgres_home()
    out = subprocess.run(
        ["runuser", "-u", POSTGRES_USER, "--", str(_pg("psql")), "-h", str(home),
         "-p", str(POSTGRES_PORT), "-d", db, "-v", "ON_ERROR_STOP=1", "-tAc", sql],
        capture_output=True, text=True, cwd=home,
    )
    if out.returncode != 0:
        raise RuntimeError(f"psql failed: {out.stderr.strip()}")
    return out.stdout.strip()


def _postgres_healthy() -> bool:
    out = subprocess.run(
        [str(_pg("pg_isready")), "-h", "127.0.0.1", "-p", str(POSTGRES_PORT)], capture_output=True
    )
    return out.returncode == 0


def _start_postgres() -> None:
    home = _prepare_postgres_home()
    data = home / "data"
    if not (data / "PG_VERSION").exists():
        say("initialising PostgreSQL data directory")
        out = subprocess.run(
            ["runuser", "-u", POSTGRES_USER, "--", str(_pg("initdb")), "-D", str(data), "-U", "postgres",
             "--auth-local=peer", "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8"],
            capture_output=True, text=True, cwd=home,
        )
        if out.returncode != 0:
            raise RuntimeError(f"initdb failed:\n{out.stdout}\n{out.stderr}")
    POSTGRES.spawn(
        [str(_pg("postgres")), "-D", str(data), "-p", str(POSTGRES_PORT), "-c", "listen_addresses=127.0.0.1",
         "-c", f"unix_socket_directories={home}", "-c", "fsync=on", "-c", "max_connections=200"],
        user=POSTGRES_USER, cwd=home,
    )


def _prepare_postgres() -> None:
    password = _secrets()["postgres_password"].replace("'", "''")
    # CREATEROLE: migration 0009 creates the services' least-privilege group roles (on RDS the
    # master user, which runs the migrations, has it too); never SUPERUSER
    if _psql("SELECT 1 FROM pg_roles WHERE rolname='lupita'") != "1":
        _psql(f"CREATE ROLE lupita LOGIN CREATEROLE PASSWORD '{password}'")
    else:
        _psql(f"ALTER ROLE lupita CREATEROLE PASSWORD '{password}'")
    if _psql("SELECT 1 FROM pg_database WHERE datname='lupita'") != "1":
        _psql("CREATE DATABASE lupita OWNER lupita")


def _start_minio(binary: Path) -> None:
    s = _secrets()
    data = stack_dir() / "minio" / "data"
    data.mkdir(parents=True, exist_ok=True)
    MINIO.spawn(
        [str(binary), "server", str(data), "--address", f"127.0.0.1:{MINIO_PORT}",
         "--console-address", f"127.0.0.1:{MINIO_CONSOLE_PORT}", "--quiet"],
        env={
            "MINIO_ROOT_USER": s["minio_user"],
            "MINIO_ROOT_PASSWORD": s["minio_password"],
            "MINIO_KMS_SECRET_KEY": f"{KMS_KEY_NAME}:{s['kms_key']}",
            "MINIO_BROWSER": "off",
            "MINIO_UPDATE": "off",
        },
    )


def _start_weaviate(binary: Path) -> None:
    data = stack_dir() / "weaviate" / "data"
    data.mkdir(parents=True, exist_ok=True)
    WEAVIATE.spawn(
        [str(binary), "--host", "127.0.0.1", "--port", str(WEAVIATE_HTTP_PORT), "--scheme", "http"],
        env={
            "PERSISTENCE_DATA_PATH": str(data),
            "AUTHENTICATION_ANONYMOUS_ACCESS_ENABLED": "true",
            "DEFAULT_VECTORIZER_MODULE": "none",
            "ENABLE_MODULES": "",
            "DISABLE_TELEMETRY": "true",
            "GRPC_PORT": str(WEAVIATE_GRPC_PORT),
            "CLUSTER_HOSTNAME": "lupita-local",
            "CLUSTER_IN_LOCALHOST": "true",
            "CLUSTER_GOSSIP_BIND_PORT": str(WEAVIATE_GOSSIP_PORT),
            "CLUSTER_DATA_BIND_PORT": str(WEAVIATE_DATA_PORT),
            "RAFT_PORT": str(WEAVIATE_RAFT_PORT),
            "RAFT_INTERNAL_RPC_PORT": str(WEAVIATE_RAFT_RPC_PORT),
            "RAFT_BOOTSTRAP_EXPECT": "1",
            "RAFT_JOIN": f"lupita-local:{WEAVIATE_RAFT_PORT}",
            "GO_PROFILING_DISABLE": "true",
            "LIMIT_RESOURCES": "true",
            "QUERY_DEFAULTS_LIMIT": "100",
        },
    )


HEALTH = {
    "kafka": _kafka_healthy,
    "postgres": _postgres_healthy,
    "minio": lambda: _http_ok(f"http://127.0.0.1:{MINIO_PORT}/minio/health/live"),
    "weaviate": lambda: _http_ok(f"http://127.0.0.1:{WEAVIATE_HTTP_PORT}/v1/.well-known/ready"),
}
START_TIMEOUT = {"kafka": 90, "postgres": 30, "minio": 60, "weaviate": 120}


# --------------------------------------------------------------------------- public API


def status() -> dict[str, dict]:
    """Per component: pid (if ours and alive), port and health."""
    return {
        name: {"pid": proc.pid(), "port": proc.port, "healthy": HEALTH[name]()}
        for name, proc in PROCS.items()
    }


def is_running() -> bool:
    return all(s["healthy"] for s in status().values())


def _prepare(components: tuple[str, ...], env: dict[str, str], quiet: bool) -> None:
    """Database role/db and S3 buckets (idempotent, so an interrupted first `up` heals)."""
    if "postgres" in components:
        _prepare_postgres()
    if "minio" in components:
        from .buckets import setup_buckets

        for line in setup_buckets(env):
            if not quiet:
                say(line)
    _write_env_file(env)


def up(components: tuple[str, ...] = COMPONENTS) -> dict[str, str]:
    """Install what is missing, start what is not running, prepare DB and buckets; return env."""
    started_all = time.monotonic()
    env = stack_env()
    healthy = {c: HEALTH[c]() for c in components}
    foreign = [c for c in components if healthy[c] and PROCS[c].pid() is None]
    if foreign:  # e.g. another checkout's stack on the same ports: never use (or prepare) it
        raise RuntimeError(
            "; ".join(f"port {PROCS[c].port} for {c} answers, but this stack ({stack_dir()}) did not start it"
                      for c in foreign)
            + ": another checkout's stack? Stop it, or give this one other ports with LUPITA_STACK_PORT_OFFSET")
    if all(healthy.values()):
        _prepare(components, env, quiet=True)
        return env
    bins = install.install_all(components)
    starters = {
        "kafka": lambda: _start_kafka(bins["kafka"]),
        "postgres": _start_postgres,
        "minio": lambda: _start_minio(bins["minio"]),
        "weaviate": lambda: _start_weaviate(bins["weaviate"]),
    }
    launched = []
    for name in components:
        proc = PROCS[name]
        if HEALTH[name]():
            continue
        if proc.pid() is None and _port_open(proc.port):
            raise RuntimeError(
                f"port {proc.port} for {name} is taken by a process this stack did not start"
            )
        if proc.pid() is None:
            say(f"starting {name} on 127.0.0.1:{proc.port}")
            starters[name]()
        launched.append(name)
    for name in launched:
        _wait(name, HEALTH[name], PROCS[name], START_TIMEOUT[name])
        say(f"{name} healthy")
    _prepare(components, env, quiet=False)
    say(f"stack up in {time.monotonic() - started_all:.1f}s; settings in {stack_dir() / 'env'}")
    return env


def down() -> list[str]:
    """Stop every process this stack started (data stays); returns the names stopped."""
    stopped = []
    for name in reversed(COMPONENTS):
        if PROCS[name].stop():
            stopped.append(name)
    return stopped
