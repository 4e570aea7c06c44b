"""The local Kubernetes cluster: a real control plane on 127.0.0.1 and a kwok fake node.

``up()`` builds what is missing (:mod:`lupita_dev.cluster.tools`), makes the credentials
(:mod:`lupita_dev.cluster.pki`), adds blackhole routes for the service and pod ranges (so
that no packet for a cluster address can ever follow the default route off the machine),
starts etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok as local
processes with their state and logs under ``<stack dir>/cluster`` (git-ignored), registers
the fake node and waits until it is Ready and the ``default`` service account exists (a pod
cannot be created before). It writes ``<stack dir>/cluster/kubeconfig``. A second ``up()``
finds it healthy and returns. ``down()`` stops every process it started, removes the routes
it added and deletes the cluster's etcd data, so the next ``up()`` starts empty.

Every port is on 127.0.0.1 and apart from the dev stack's (``lupita stack status``), and follows
``LUPITA_STACK_PORT_OFFSET`` like the stack's, so a second checkout runs its own cluster beside.
The blackhole routes are machine-wide and shared: each cluster registers itself as a holder of
each range (under ``/run/lupita-cluster-routes``, a file lock around every change) and ``down``
removes a route only when no other cluster holds it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from lupita_dev.stack.manager import PORT_OFFSET, ROOT, Proc

from . import pki as pki_mod
from . import tools
from .tools import say

# LUPITA_STACK_PORT_OFFSET shifts them as it shifts the stack's
ETCD_CLIENT_PORT = 12379 + PORT_OFFSET
ETCD_PEER_PORT = 12380 + PORT_OFFSET
APISERVER_PORT = 16443 + PORT_OFFSET
CONTROLLER_MANAGER_PORT = 16257 + PORT_OFFSET
SCHEDULER_PORT = 16259 + PORT_OFFSET
KWOK_PORT = 16247 + PORT_OFFSET

# cluster address ranges; both are blackholed on the host while the cluster is up
SERVICE_CIDR = "10.96.0.0/16"
SERVICE_IP = "10.96.0.1"  # the `kubernetes` Service's ClusterIP: the first address of the range
POD_CIDR = "10.244.0.0/16"
KWOK_NODE = "lupita-kwok-0"
KWOK_NODE_IP = "127.0.0.1"  # the apiserver reaches a node's "kubelet" here: never off the machine


# what `up` runs (the kwok cluster) and the tests drive it with
KWOK_CLUSTER_TOOLS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok", "kubectl", "helm")


def cluster_dir() -> Path:
    base = Path(os.environ.get("LUPITA_STACK_DIR", ROOT / ".stack"))
    path = Path(os.environ.get("LUPITA_CLUSTER_DIR", base / "cluster"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def kubeconfig_path() -> Path:
    return cluster_dir() / "kubeconfig"


def server_url() -> str:
    return f"https://127.0.0.1:{APISERVER_PORT}"


class ClusterProc(Proc):
    """A cluster process: pid file and log under the cluster dir (the stack's Proc otherwise)."""

    @property
    def pidfile(self) -> Path:
        return cluster_dir() / "run" / f"{self.name}.pid"

    @property
    def logfile(self) -> Path:
        return cluster_dir() / "logs" / f"{self.name}.log"

    def pid(self) -> int | None:
        """The running pid; an exited child of this very process (a zombie: the test session
        that started the cluster) is reaped and counts as gone, or ``stop`` would wait it out."""
        pid = super().pid()
        if pid is None:
            return None
        try:
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return None
        except ChildProcessError:  # not our child: its parent (or init) reaps it
            try:
                state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except (OSError, IndexError):
                return None
            if state == "Z":
                return None
        return pid


ETCD = ClusterProc("etcd", ETCD_CLIENT_PORT)
APISERVER = ClusterProc("kube-apiserver", APISERVER_PORT)
CONTROLLER_MANAGER = ClusterProc("kube-controller-manager", CONTROLLER_MANAGER_PORT)
SCHEDULER = ClusterProc("kube-scheduler", SCHEDULER_PORT)
KWOK = ClusterProc("kwok", KWOK_PORT)
PROCS = (ETCD, APISERVER, CONTROLLER_MANAGER, SCHEDULER, KWOK)  # start order; stopped in reverse


# --------------------------------------------------------------------------- health


def _https_ok(port: int, path: str, token: str | None = None) -> bool:
    """GET https://127.0.0.1:port/path answers 200 (self-signed serving certs: not verified,
    the check is that the process serves, the kubeconfigs pin the CA)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    req = urllib.request.Request(f"https://127.0.0.1:{port}{path}")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=2, context=ctx) as resp:
            return resp.status == 200
    except (OSError, urllib.error.URLError):
        return False


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status == 200
    except (OSError, urllib.error.URLError):
        return False


def _wait(what: str, check, proc: ClusterProc | None, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if proc is not None and proc.pid() is None:
            tail = proc.logfile.read_text(errors="replace")[-3000:] if proc.logfile.exists() else ""
            raise RuntimeError(f"{what} exited during start-up; log {proc.logfile}:\n{tail}")
        time.sleep(0.3)
    log = f"; see {proc.logfile}" if proc is not None else ""
    raise RuntimeError(f"{what} not ready after {timeout:.0f}s{log}")


def kubectl(*args: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess:
    """Run the cached kubectl against the local cluster."""
    cmd = [str(tools.ensure("kubectl")), "--kubeconfig", str(kubeconfig_path()), *args]
    out = subprocess.run(cmd, capture_output=True, text=True, input=input, timeout=120)
    if check and out.returncode != 0:
        raise RuntimeError(f"kubectl {' '.join(args)} failed (exit {out.returncode}): {out.stderr.strip()}")
    return out


# --------------------------------------------------------------------------- routes


def _state_file() -> Path:
    return cluster_dir() / "state.json"


def _state() -> dict:
    try:
        return json.loads(_state_file().read_text())
    except (FileNotFoundError, ValueError):
        return {}


def _save_state(state: dict) -> None:
    _state_file().write_text(json.dumps(state, indent=2))


def _routes_for(cidr: str) -> list[str]:
    out = subprocess.run(["ip", "-4", "route", "show", "table", "all", "to", "root", cidr],
                         capture_output=True, text=True, check=True)
    return [line for line in out.stdout.splitlines() if line.strip()]


ROUTE_HOLDERS = Path("/run/lupita-cluster-routes")  # tmpfs: gone with the routes at a reboot


@contextmanager
def _routes_locked() -> Iterator[None]:
    """One route change at a time on this machine (every checkout's cluster)."""
    ROUTE_HOLDERS.mkdir(parents=True, exist_ok=True)
    with (ROUTE_HOLDERS / ".lock").open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def _holder_dir(cidr: str) -> Path:
    return ROUTE_HOLDERS / cidr.replace("/", "_")


def _holder_file(cidr: str) -> Path:
    me = hashlib.sha256(str(cluster_dir().resolve()).encode()).hexdigest()[:16]
    return _holder_dir(cidr) / me


def route_holders(cidr: str) -> list[str]:
    """The cluster dirs of the other clusters that hold the range ``cidr`` (a holder whose
    cluster dir no longer exists is stale and dropped)."""
    mine = _holder_file(cidr)
    others = []
    for holder in sorted(_holder_dir(cidr).glob("*")) if _holder_dir(cidr).exists() else []:
        if holder == mine:
            continue
        where = holder.read_text().strip()
        if Path(where).is_dir():
            others.append(where)
        else:
            holder.unlink(missing_ok=True)
    return others


# While the real node's kube-proxy runs, the service range is routed via `lo` instead of the
# blackhole: a connect() to a ClusterIP then passes the route lookup (a blackhole fails it before any
# netfilter hook) and kube-proxy's DNAT in nat/OUTPUT applies; what no rule rewrites is dropped on
# `lo` (not a local address; a `lo` route never leads off the machine).
# The swap is one `ip route replace` each way, so the range is never without a route, and the
# route carries its own protocol number so that a route left by a crash is recognised and put back.
SERVICE_ROUTE_PROTO = "190"


def _service_route_via_lo() -> bool:
    return any(line.startswith(f"{SERVICE_CIDR} dev lo ") and f" proto {SERVICE_ROUTE_PROTO} " in f"{line} "
               for line in _routes_for(SERVICE_CIDR))


def _close_service_range_locked() -> bool:
    """The `lo` route of the service range back to the blackhole (caller holds the routes lock)."""
    if not _service_route_via_lo():
        return False
    subprocess.run(["ip", "route", "replace", "blackhole", SERVICE_CIDR], check=True, capture_output=True, text=True)
    say(f"the service range {SERVICE_CIDR} is blackholed again")
    return True


def close_service_range() -> bool:
    """Put the blackhole back on the service range (True: it was routed via `lo`)."""
    with _routes_locked():
        return _close_service_range_locked()


def open_service_range() -> None:
    """Route the service range via `lo` while the real node's kube-proxy runs (see above). Only
    our own blackhole is replaced; any other route of the range is refused."""
    with _routes_locked():
        lines = _routes_for(SERVICE_CIDR)
        if _service_route_via_lo():
            return
        if not any(line.startswith(f"blackhole {SERVICE_CIDR}") for line in lines) or len(lines) != 1:
            raise RuntimeError(f"the service range {SERVICE_CIDR} is not (only) blackholed on this machine ({lines}): "
                               "refusing to route it via lo")
        subprocess.run(["ip", "route", "replace", SERVICE_CIDR, "dev", "lo", "proto", SERVICE_ROUTE_PROTO],
                       check=True, capture_output=True, text=True)


def _recover_service_range_locked() -> None:
    """A `lo` route left by a real node whose kube-proxy no longer runs (a crash, a kill): back to
    the blackhole. Run at every up and down of any cluster on this machine."""
    from . import node

    if _service_route_via_lo() and not node.kube_proxy_alive():
        say(f"the service range {SERVICE_CIDR} was left routed via lo without a running kube-proxy")
        _close_service_range_locked()


def add_blackhole_routes() -> list[str]:
    """Blackhole the service and pod ranges on the host: without kube-proxy (kwok node) a
    packet to a ClusterIP or pod IP would otherwise follow the default route off the machine.
    A real node's CNI bridge adds a more specific connected route for its own pod subnet,
    which wins over the blackhole for exactly the addresses that exist on this machine.
    The route may be there already (another checkout's cluster): this cluster becomes one
    more holder of it. A service range left routed via `lo` by a real node whose kube-proxy is
    gone is blackholed again first."""
    state = _state()
    held = list(state.get("routes", []))
    with _routes_locked():
        _recover_service_range_locked()
        for cidr in (SERVICE_CIDR, POD_CIDR):
            existing = _routes_for(cidr)
            # a live real node's kube-proxy routes the service range via lo: held like the blackhole
            via_lo = cidr == SERVICE_CIDR and _service_route_via_lo()
            if not via_lo and not any(line.startswith(f"blackhole {cidr}") for line in existing):
                foreign = [line for line in existing if not line.startswith("blackhole")]
                if foreign:
                    raise RuntimeError(f"the cluster range {cidr} is already routed on this machine ({foreign}); "
                                       "refusing to start a cluster whose addresses would collide")
                try:
                    subprocess.run(["ip", "route", "add", "blackhole", cidr], check=True, capture_output=True,
                                   text=True)
                except subprocess.CalledProcessError as exc:
                    raise RuntimeError(f"could not add the blackhole route for {cidr} ({exc.stderr.strip()}); the "
                                       "cluster needs root (CAP_NET_ADMIN) so that its addresses cannot leave "
                                       "the machine") from exc
            _holder_file(cidr).parent.mkdir(parents=True, exist_ok=True)
            _holder_file(cidr).write_text(str(cluster_dir().resolve()))
            if cidr not in held:
                held.append(cidr)
            state["routes"] = held
            _save_state(state)
    return held


def remove_blackhole_routes() -> list[str]:
    """Give up this cluster's hold on its ranges; a route goes when no other cluster holds it.
    Returns the ranges whose routes were removed."""
    state = _state()
    removed, released = [], []
    with _routes_locked():
        _recover_service_range_locked()
        for cidr in state.get("routes", []):
            _holder_file(cidr).unlink(missing_ok=True)
            released.append(cidr)
            others = route_holders(cidr)
            if others:
                say(f"keeping the blackhole route for {cidr}: the cluster of {', '.join(others)} holds it too")
                continue
            out = subprocess.run(["ip", "route", "del", "blackhole", cidr], capture_output=True, text=True)
            if out.returncode == 0 or "No such process" in out.stderr:
                removed.append(cidr)
        state["routes"] = [c for c in state.get("routes", []) if c not in released]
        _save_state(state)
    return removed


# --------------------------------------------------------------------------- components


def _pki() -> pki_mod.Pki:
    return pki_mod.ensure_pki(cluster_dir() / "pki", SERVICE_IP)


def _write_kubeconfigs(pki: pki_mod.Pki) -> dict[str, Path]:
    paths = {}
    for user in pki_mod.USERS:
        path = cluster_dir() / ("kubeconfig" if user == "admin" else f"kubeconfig-{user}")
        path.write_text(pki_mod.kubeconfig(server_url(), pki.ca_crt, user, pki.token(user)))
        path.chmod(0o600)
        paths[user] = path
    return paths


def _start_etcd() -> None:
    data = cluster_dir() / "etcd"
    ETCD.spawn([
        str(tools.ensure("etcd")), "--name", "lupita", "--data-dir", str(data),
        "--listen-client-urls", f"http://127.0.0.1:{ETCD_CLIENT_PORT}",
        "--advertise-client-urls", f"http://127.0.0.1:{ETCD_CLIENT_PORT}",
        "--listen-peer-urls", f"http://127.0.0.1:{ETCD_PEER_PORT}",
        "--initial-advertise-peer-urls", f"http://127.0.0.1:{ETCD_PEER_PORT}",
        "--initial-cluster", f"lupita=http://127.0.0.1:{ETCD_PEER_PORT}",
        "--quota-backend-bytes", str(2 * 1024**3),
    ])
    _wait("etcd", lambda: _http_ok(f"http://127.0.0.1:{ETCD_CLIENT_PORT}/health"), ETCD, 60)


def _start_apiserver(pki: pki_mod.Pki) -> None:
    APISERVER.spawn([
        str(tools.ensure("kube-apiserver")),
        f"--etcd-servers=http://127.0.0.1:{ETCD_CLIENT_PORT}",
        "--bind-address=127.0.0.1", f"--secure-port={APISERVER_PORT}",
        # a loopback advertise address is refused unless the endpoints reconciler is off
        "--advertise-address=127.0.0.1", "--endpoint-reconciler-type=none",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        f"--cert-dir={cluster_dir() / 'pki'}",
        f"--tls-cert-file={pki.apiserver_crt}", f"--tls-private-key-file={pki.apiserver_key}",
        f"--client-ca-file={pki.ca_crt}",
        f"--token-auth-file={pki.token_file}",
        f"--service-account-key-file={pki.sa_pub}", f"--service-account-signing-key-file={pki.sa_key}",
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
        f"--kubelet-client-certificate={pki.kubelet_client_crt}",
        f"--kubelet-client-key={pki.kubelet_client_key}",
        f"--kubelet-certificate-authority={pki.ca_crt}",
        "--kubelet-preferred-address-types=InternalIP",
        "--authorization-mode=Node,RBAC", "--allow-privileged=true",
        "--enable-admission-plugins=NodeRestriction", "--profiling=false",
    ])
    _wait("kube-apiserver", lambda: _https_ok(APISERVER_PORT, "/readyz", pki.token("admin")), APISERVER, 120)


def _start_controller_manager(pki: pki_mod.Pki, kubeconfigs: dict[str, Path]) -> None:
    kc = kubeconfigs["kube-controller-manager"]
    CONTROLLER_MANAGER.spawn([
        str(tools.ensure("kube-controller-manager")),
        f"--kubeconfig={kc}", f"--authentication-kubeconfig={kc}", f"--authorization-kubeconfig={kc}",
        "--bind-address=127.0.0.1", f"--secure-port={CONTROLLER_MANAGER_PORT}",
        # no node IPAM: pod addresses come from kwok (or the real node's CNI config)
        "--controllers=*,-nodeipam", "--leader-elect=false",
        f"--service-account-private-key-file={pki.sa_key}", f"--root-ca-file={pki.ca_crt}",
        f"--cluster-signing-cert-file={pki.ca_crt}", f"--cluster-signing-key-file={pki.ca_key}",
        f"--service-cluster-ip-range={SERVICE_CIDR}", "--use-service-account-credentials=false",
        "--profiling=false",
    ])
    _wait("kube-controller-manager", lambda: _https_ok(CONTROLLER_MANAGER_PORT, "/healthz"),
          CONTROLLER_MANAGER, 60)


def _start_scheduler(kubeconfigs: dict[str, Path]) -> None:
    kc = kubeconfigs["kube-scheduler"]
    SCHEDULER.spawn([
        str(tools.ensure("kube-scheduler")),
        f"--kubeconfig={kc}", f"--authentication-kubeconfig={kc}", f"--authorization-kubeconfig={kc}",
        "--bind-address=127.0.0.1", f"--secure-port={SCHEDULER_PORT}", "--leader-elect=false",
        "--profiling=false",
    ])
    _wait("kube-scheduler", lambda: _https_ok(SCHEDULER_PORT, "/healthz"), SCHEDULER, 60)


# kwok also plays the cloud's load-balancer controller (the AWS Load Balancer Controller on
# EKS): a LoadBalancer Service gets an ingress address, its ClusterIP, which is blackholed on
# this machine like the whole service range; without it `helm install --wait` never ends.
SERVICE_LOAD_BALANCER_STAGE = """\
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: lupita-service-load-balancer
spec:
  resourceRef:
    apiGroup: v1
    kind: Service
  selector:
    matchExpressions:
    - key: '.spec.type'
      operator: 'In'
      values:
      - 'LoadBalancer'
    - key: '.status.loadBalancer.ingress'
      operator: 'DoesNotExist'
  next:
    statusTemplate: |
      loadBalancer:
        ingress:
        - ip: {{ .spec.clusterIP | Quote }}
          ipMode: VIP
"""


# A test's failing container on the kwok node: a running pod annotated lupita.dev/kwok-fail=true
# ends Failed (exit 1) instead of Ready/Completed (its weight wins over kwok's own pod stages).
# The tests use it to run a failing Helm hook Job without a real node.
POD_FAIL_ANNOTATION = "lupita.dev/kwok-fail"
POD_FAIL_STAGE = """\
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: lupita-pod-fail
spec:
  resourceRef:
    apiGroup: v1
    kind: Pod
  selector:
    matchExpressions:
    - key: '.metadata.annotations["lupita.dev/kwok-fail"]'
      operator: 'In'
      values:
      - 'true'
    - key: '.metadata.deletionTimestamp'
      operator: 'DoesNotExist'
    - key: '.status.phase'
      operator: 'In'
      values:
      - 'Running'
  weight: 10000
  next:
    statusTemplate: |
      {{ $now := Now }}
      conditions:
      - lastTransitionTime: {{ $now | Quote }}
        status: "False"
        reason: ""
        type: Ready
      containerStatuses:
      {{ range $index, $item := .spec.containers }}
      - image: {{ $item.image | Quote }}
        name: {{ $item.name | Quote }}
        ready: false
        restartCount: 0
        started: false
        state:
          terminated:
            exitCode: 1
            finishedAt: {{ $now | Quote }}
            reason: Error
            startedAt: {{ $now | Quote }}
      {{ end }}
      phase: Failed
"""


def kwok_stages() -> Path:
    """kwok's behaviour (Stage objects) from its own module: nodes become Ready and keep a
    lease, pods become Ready at once, Job pods complete; and LoadBalancer Services get an
    address, a pod annotated to fail fails (ours)."""
    path = cluster_dir() / "kwok-stages.yaml"
    src = tools.module_dir(f"sigs.k8s.io/kwok@{tools.KWOK_VERSION}") / "kustomize" / "stage"
    docs = []
    for folder in ("node/fast", "node/heartbeat-with-lease", "pod/fast"):
        for yaml_file in sorted((src / folder).glob("*.yaml")):
            if yaml_file.name != "kustomization.yaml":
                docs.append(yaml_file.read_text().strip())
    if not docs:
        raise RuntimeError(f"no kwok stage files found under {src}")
    docs.append(SERVICE_LOAD_BALANCER_STAGE.strip())
    docs.append(POD_FAIL_STAGE.strip())
    path.write_text("\n---\n".join(docs) + "\n")
    return path


def _start_kwok(kubeconfigs: dict[str, Path]) -> None:
    stages = kwok_stages()
    KWOK.spawn([
        str(tools.ensure("kwok")), f"--kubeconfig={kubeconfigs['kwok']}", f"--config={stages}",
        "--manage-all-nodes=false", "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
        f"--cidr={POD_CIDR}", f"--node-ip={KWOK_NODE_IP}", f"--node-port={KWOK_PORT}",
        f"--server-address=127.0.0.1:{KWOK_PORT}", "--node-lease-duration-seconds=40",
    ])
    _wait("kwok", lambda: _http_ok(f"http://127.0.0.1:{KWOK_PORT}/healthz"), KWOK, 60)


KWOK_NODE_MANIFEST = {
    "apiVersion": "v1", "kind": "Node",
    "metadata": {
        "name": KWOK_NODE,
        "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
        "labels": {"kubernetes.io/hostname": KWOK_NODE, "kubernetes.io/os": "linux",
                   "kubernetes.io/arch": "amd64", "type": "kwok",
                   "topology.kubernetes.io/zone": "local-a", "topology.kubernetes.io/region": "local"},
    },
    "spec": {},
    "status": {"allocatable": {"cpu": "32", "memory": "256Gi", "pods": "110"},
               "capacity": {"cpu": "32", "memory": "256Gi", "pods": "110"},
               "nodeInfo": {"architecture": "amd64", "operatingSystem": "linux",
                            "kubeletVersion": "fake", "kubeProxyVersion": "fake"}},
}


def _node_ready(name: str) -> bool:
    out = kubectl("get", "node", name, "-o",
                  "jsonpath={.status.conditions[?(@.type=='Ready')].status}", check=False)
    return out.returncode == 0 and out.stdout.strip() == "True"


def _default_service_account() -> bool:
    return kubectl("get", "serviceaccount", "default", "-n", "default", check=False).returncode == 0


# --------------------------------------------------------------------------- up / down / status


def status() -> dict[str, dict]:
    """What runs: each process' pid and health, the routes, the node."""
    token = None
    try:
        token = _pki().token("admin") if (cluster_dir() / "pki" / "tokens.json").exists() else None
    except (OSError, ValueError, KeyError):
        token = None
    checks = {
        "etcd": lambda: _http_ok(f"http://127.0.0.1:{ETCD_CLIENT_PORT}/health"),
        "kube-apiserver": lambda: _https_ok(APISERVER_PORT, "/readyz", token),
        "kube-controller-manager": lambda: _https_ok(CONTROLLER_MANAGER_PORT, "/healthz"),
        "kube-scheduler": lambda: _https_ok(SCHEDULER_PORT, "/healthz"),
        "kwok": lambda: _http_ok(f"http://127.0.0.1:{KWOK_PORT}/healthz"),
    }
    result = {}
    for proc in PROCS:
        pid = proc.pid()
        result[proc.name] = {"pid": pid, "port": proc.port, "healthy": bool(pid and checks[proc.name]())}
    return result


def is_up() -> bool:
    return all(s["healthy"] for s in status().values())


def up() -> Path:
    """Start the cluster (idempotent); returns the admin kubeconfig's path."""
    if is_up() and _node_ready(KWOK_NODE):
        return kubeconfig_path()
    for name in KWOK_CLUSTER_TOOLS:
        tools.ensure(name)
    started = time.monotonic()
    add_blackhole_routes()
    pki = _pki()
    kubeconfigs = _write_kubeconfigs(pki)
    steps = ((ETCD, _start_etcd), (APISERVER, lambda: _start_apiserver(pki)),
             (CONTROLLER_MANAGER, lambda: _start_controller_manager(pki, kubeconfigs)),
             (SCHEDULER, lambda: _start_scheduler(kubeconfigs)), (KWOK, lambda: _start_kwok(kubeconfigs)))
    current = status()
    if not any(s["pid"] for s in current.values()):
        shutil.rmtree(cluster_dir() / "logs", ignore_errors=True)  # a fresh cluster: fresh logs
    for proc, start in steps:
        if current[proc.name]["healthy"]:
            continue
        proc.stop()  # a pid file whose process does not answer: start it afresh
        say(f"starting {proc.name} on 127.0.0.1:{proc.port}")
        start()
    kubectl("apply", "-f", "-", input=json.dumps(KWOK_NODE_MANIFEST))
    _wait(f"node {KWOK_NODE} Ready", lambda: _node_ready(KWOK_NODE), KWOK, 60)
    _wait("the default service account", _default_service_account, CONTROLLER_MANAGER, 60)
    say(f"cluster up in {time.monotonic() - started:.1f}s: export KUBECONFIG={kubeconfig_path()}")
    return kubeconfig_path()


def down() -> list[str]:
    """Stop every process this cluster started (the real node first, if it ran), remove its
    routes and its etcd data."""
    from . import node

    stopped = node.down()
    stopped += [proc.name for proc in reversed(PROCS) if proc.stop()]
    removed = remove_blackhole_routes()
    if removed:
        stopped.append(f"routes {', '.join(removed)}")
    shutil.rmtree(cluster_dir() / "etcd", ignore_errors=True)
    return stopped
