"""The real node: containerd (Debian) + runc + the self-built kubelet + a CNI bridge.

It runs real pods from the images ``lupita cluster images`` builds (loaded with
``podman save | ctr import``, ``imagePullPolicy: Never``). The node's address, 10.245.0.1, is
a /32 on ``lo`` (the kubelet refuses a loopback node IP, and this machine has no dummy link
type): probes and the apiserver reach it without a packet leaving the machine, and the rest of
10.245.0.0/16 is blackholed. Pods on the pod network get 10.244.1.0/24 on bridge
``lupita-br0`` with no masquerading, and the host does not forward (ip_forward stays 0), so a
pod cannot reach anything beyond this machine; host-network pods reach the dev stack on
127.0.0.1. There is no cluster DNS.

kube-proxy (iptables mode, the self-built binary) makes ClusterIPs answer from the host: while it
runs, the service range is routed via ``lo`` instead of its blackhole (a blackhole fails connect()
at the route lookup, before kube-proxy's DNAT in nat/OUTPUT could apply), and what no rule
rewrites dies on ``lo``. The swap is one ``ip route replace`` each way and is undone on every
exit path: ``down``, a failed ``up``, and at the next up/down of any cluster when kube-proxy is
gone (a crash; :func:`lupita_dev.cluster.manager.add_blackhole_routes`). kube-proxy changes no
sysctl here: NodePorts only on the node address (and ``::1``; never the machine's own
addresses, no ``route_localnet``), conntrack limits and timeouts left as they are.

containerd's CRI plugin needs ``restrict_oom_score_adj`` here (no CAP_SYS_RESOURCE), the kubelet
``failCgroupV1: false`` and the cgroupfs driver; the pod sandbox ("pause") image is a
ten-line static Go program in a ``FROM scratch`` image (no registry to pull one from).

``down()`` removes everything the node made: pods' containers (via the kubelet, then any
shim left), containerd and the kubelet, their mounts, the network namespaces and the bridge,
the CNI address store, the iptables and ip6tables chains the kubelet and kube-proxy add (KUBE-*),
the node address and its route, and the Node object; the service range is blackholed again
first.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import textwrap
import time
from pathlib import Path

from . import manager, tools
from . import pki as pki_mod
from .tools import say

NODE = "lupita-node"
NODE_IP = "10.245.0.1"
NODE_RANGE = "10.245.0.0/16"
BRIDGE = "lupita-br0"
POD_SUBNET = "10.244.1.0/24"  # inside the cluster's (blackholed) pod range; the bridge's route wins
POD_GATEWAY = "10.244.1.1"
KUBELET_PORT = 16250 + manager.PORT_OFFSET
KUBELET_HEALTHZ_PORT = 16248 + manager.PORT_OFFSET
KUBE_PROXY_HEALTHZ_PORT = 16256 + manager.PORT_OFFSET
KUBE_PROXY_METRICS_PORT = 16249 + manager.PORT_OFFSET
# the node's containerd, address, bridge and iptables chains are machine-wide: one real node per
# machine, owned by one cluster dir (a second checkout's `up --real-node` is refused, and its
# `down` leaves the owner's node alone)
OWNER_FILE = Path("/run/lupita-real-node.owner")
OWNER_LOCK = Path("/run/lupita-real-node.lock")
PAUSE_IMAGE = "localhost/lupita-pause:1"
RUN_DIR = Path("/run/lupita-containerd")  # short: unix socket paths are limited to 108 bytes
KUBELET_ROOT = Path("/var/lib/lupita-kubelet")
CONTAINERD_SOCK = RUN_DIR / "containerd.sock"
NETNS_DIR = Path("/run/netns")

CONTAINERD = manager.ClusterProc("containerd", 0)
KUBELET = manager.ClusterProc("kubelet", KUBELET_HEALTHZ_PORT)  # status shows its 127.0.0.1 healthz
KUBE_PROXY = manager.ClusterProc("kube-proxy", KUBE_PROXY_HEALTHZ_PORT)


def node_dir() -> Path:
    path = manager.cluster_dir() / "node"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _sh(*args: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
    out = subprocess.run(args, capture_output=True, text=True, **kw)
    if check and out.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed (exit {out.returncode}): {out.stderr.strip()}")
    return out


def _ctr(*args: str, **kw) -> subprocess.CompletedProcess:
    return _sh("ctr", "-a", str(CONTAINERD_SOCK), "-n", "k8s.io", *args, **kw)


def _state() -> dict:
    path = node_dir() / "state.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _save_state(state: dict) -> None:
    (node_dir() / "state.json").write_text(json.dumps(state, indent=2))


# --------------------------------------------------------------------------- images


def pause_image() -> str:
    """The pod sandbox image: a static binary that waits for SIGTERM, in a FROM scratch image."""
    from .images import image_exists, podman

    if image_exists(PAUSE_IMAGE):
        return PAUSE_IMAGE
    src = tools.cache_dir() / "src" / "pause"
    src.mkdir(parents=True, exist_ok=True)
    (src / "go.mod").write_text("module lupita.local/pause\n\ngo 1.24.0\n")
    (src / "main.go").write_text(textwrap.dedent("""\
        // The pod sandbox of the local node: holds the pod's namespaces until SIGTERM.
        package main

        import (
        \t"os"
        \t"os/signal"
        \t"syscall"
        )

        func main() {
        \tc := make(chan os.Signal, 1)
        \tsignal.Notify(c, syscall.SIGTERM, syscall.SIGINT)
        \t<-c
        }
        """))
    (src / "Containerfile").write_text('FROM scratch\nCOPY pause /pause\nUSER 65535:65535\nENTRYPOINT ["/pause"]\n')
    _sh(tools._go(), "build", "-ldflags=-s -w", "-o", str(src / "pause"), ".", cwd=src, env=tools._go_env())
    podman("build", "-t", PAUSE_IMAGE, "-f", str(src / "Containerfile"), str(src))
    return PAUSE_IMAGE


def load_images(refs: list[str]) -> dict[str, float]:
    """Copy images from podman's store into the node's containerd (seconds per image)."""
    from .images import podman_env

    took = {}
    for ref in refs:
        started = time.monotonic()
        save = subprocess.Popen(["podman", "save", ref], stdout=subprocess.PIPE, env=podman_env())
        try:
            _ctr("images", "import", "-", stdin=save.stdout)
        finally:
            save.stdout.close()
            if save.wait() != 0:
                raise RuntimeError(f"podman save {ref} failed (exit {save.returncode})")
        took[ref] = time.monotonic() - started
        say(f"loaded {ref} into the node in {took[ref]:.0f}s")
    return took


# --------------------------------------------------------------------------- configuration


def _containerd_config() -> Path:
    nd = node_dir()
    (nd / "cni").mkdir(exist_ok=True)
    (nd / "cni" / "10-lupita.conflist").write_text(json.dumps({
        "cniVersion": "0.4.0", "name": "lupita",
        "plugins": [
            {"type": "bridge", "bridge": BRIDGE, "isGateway": True, "ipMasq": False, "hairpinMode": True,
             "ipam": {"type": "host-local", "dataDir": str(nd / "cni-ipam"),
                      "ranges": [[{"subnet": POD_SUBNET, "gateway": POD_GATEWAY}]]}},
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ]}, indent=2))
    conf = nd / "containerd.toml"
    conf.write_text(textwrap.dedent(f"""\
        # written by lupita_dev.cluster.node
        version = 2
        root = "{nd / 'containerd'}"
        state = "{RUN_DIR / 'state'}"
        [grpc]
          address = "{CONTAINERD_SOCK}"
        [plugins."io.containerd.grpc.v1.cri"]
          sandbox_image = "{PAUSE_IMAGE}"
          # no CAP_SYS_RESOURCE here: without this every sandbox fails ("can't get final child's PID")
          restrict_oom_score_adj = true
          disable_apparmor = true
          [plugins."io.containerd.grpc.v1.cri".cni]
            bin_dir = "/usr/lib/cni"
            conf_dir = "{nd / 'cni'}"
          [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
            runtime_type = "io.containerd.runc.v2"
            [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
              SystemdCgroup = false
        """))
    return conf


def _kubelet_config(pki: pki_mod.Pki) -> tuple[Path, Path]:
    nd = node_dir()
    crt, key = pki_mod.issue(pki, nd / "kubelet", f"system:node:{NODE}", "system:nodes",
                             ips=[NODE_IP], dns=[NODE], server=True, client=True)
    kubeconfig = nd / "kubelet.kubeconfig"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "lupita-local", "cluster": {"server": manager.server_url(),
                                                          "certificate-authority": str(pki.ca_crt)}}],
        # the Node authorizer knows a kubelet by its client certificate: CN system:node:<name>
        "users": [{"name": NODE, "user": {"client-certificate": str(crt), "client-key": str(key)}}],
        "contexts": [{"name": "lupita-local", "context": {"cluster": "lupita-local", "user": NODE}}],
        "current-context": "lupita-local"}))
    kubeconfig.chmod(0o600)
    config = nd / "kubelet.yaml"
    config.write_text(json.dumps({
        "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
        "address": NODE_IP, "port": KUBELET_PORT, "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1", "healthzPort": KUBELET_HEALTHZ_PORT,
        "tlsCertFile": str(crt), "tlsPrivateKeyFile": str(key),
        "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": True},
                           "x509": {"clientCAFile": str(pki.ca_crt)}},
        "authorization": {"mode": "Webhook"},
        # this machine: cgroup v1 (hybrid), no systemd
        "cgroupDriver": "cgroupfs", "failCgroupV1": False, "failSwapOn": False,
        "containerRuntimeEndpoint": f"unix://{CONTAINERD_SOCK}",
        "resolvConf": "/etc/resolv.conf", "clusterDomain": "cluster.local", "staticPodPath": "",
        "serializeImagePulls": False, "protectKernelDefaults": False,
        # a shared development disk: never evict or garbage-collect the loaded images
        "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%", "imagefs.available": "1%"},
        "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,
    }))
    return config, kubeconfig


def _kube_proxy_config() -> Path:
    config = node_dir() / "kube-proxy.yaml"
    config.write_text(json.dumps({
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": str(manager.cluster_dir() / "kubeconfig-kube-proxy")},
        "hostnameOverride": NODE, "mode": "iptables",
        "bindAddress": NODE_IP,
        "healthzBindAddress": f"127.0.0.1:{KUBE_PROXY_HEALTHZ_PORT}",
        "metricsBindAddress": f"127.0.0.1:{KUBE_PROXY_METRICS_PORT}",
        "clusterCIDR": manager.POD_CIDR, "detectLocalMode": "ClusterCIDR",
        # NodePorts on the node address only (an empty list of a family means every address of the
        # machine); no loopback NodePorts, so route_localnet stays 0
        "nodePortAddresses": [f"{NODE_IP}/32", "::1/128"],
        "iptables": {"localhostNodePorts": False, "masqueradeAll": False, "syncPeriod": "30s", "minSyncPeriod": "1s"},
        # 0: leave the machine's conntrack table size and timeouts alone (they are not ours)
        "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s",
                      "udpTimeout": "0s", "udpStreamTimeout": "0s"},
        "oomScoreAdj": 0, "enableProfiling": False,
    }))
    return config


def kube_proxy_alive() -> bool:
    """Whether this machine's real node (any checkout's: the owner's) runs its kube-proxy."""
    where = owner()
    if not where:
        return False
    try:
        pid = int((Path(where) / "run" / f"{KUBE_PROXY.name}.pid").read_text().strip())
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return False
    return bool(cmd) and cmd[0].endswith(b"kube-proxy")


def _start_kube_proxy() -> None:
    """kube-proxy, then the service range via lo (blackholed again if anything fails)."""
    try:
        if not status()["kube-proxy"]["healthy"]:
            KUBE_PROXY.stop()
            say("starting kube-proxy (ClusterIPs from the host; NodePorts on the node address only)")
            KUBE_PROXY.spawn([str(tools.ensure("kube-proxy")), f"--config={_kube_proxy_config()}"])
            manager._wait("kube-proxy", lambda: status()["kube-proxy"]["healthy"], KUBE_PROXY, 120)
        manager.open_service_range()
    except BaseException:
        manager.close_service_range()
        raise


# --------------------------------------------------------------------------- up / down


def status() -> dict[str, dict]:
    return {
        "containerd": {"pid": CONTAINERD.pid(), "port": 0,
                       "healthy": bool(CONTAINERD.pid() and CONTAINERD_SOCK.exists())},
        "kubelet": {"pid": KUBELET.pid(), "port": KUBELET_HEALTHZ_PORT,
                    "healthy": bool(KUBELET.pid()) and manager._http_ok(
                        f"http://127.0.0.1:{KUBELET_HEALTHZ_PORT}/healthz")},
        "kube-proxy": {"pid": KUBE_PROXY.pid(), "port": KUBE_PROXY_HEALTHZ_PORT,
                       "healthy": bool(KUBE_PROXY.pid()) and manager._http_ok(
                           f"http://127.0.0.1:{KUBE_PROXY_HEALTHZ_PORT}/healthz")},
    }


def _node_address() -> None:
    if NODE_IP not in _sh("ip", "-4", "addr", "show", "dev", "lo").stdout:
        _sh("ip", "addr", "add", f"{NODE_IP}/32", "dev", "lo")
    if not manager._routes_for(NODE_RANGE):
        _sh("ip", "route", "add", "blackhole", NODE_RANGE)


DEBIAN_PACKAGES = {"containerd": "containerd", "runc": "runc", "/usr/lib/cni/bridge": "containernetworking-plugins",
                   "iptables": "iptables", "ctr": "containerd"}


def ensure_debian_packages() -> None:
    missing = sorted({pkg for cmd, pkg in DEBIAN_PACKAGES.items() if not (shutil.which(cmd) or Path(cmd).exists())})
    if not missing:
        return
    if os.geteuid() != 0:
        raise RuntimeError(f"the real node needs root and Debian packages {missing}")
    say(f"installing Debian packages: {', '.join(missing)}")
    _sh("apt-get", "-o", "DPkg::Lock::Timeout=900", "install", "-y", "--no-install-recommends", *missing,
        env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))


def _me() -> str:
    return str(manager.cluster_dir().resolve())


def owner() -> str | None:
    """The cluster dir whose real node this machine runs (None: no real node is set up)."""
    try:
        where = OWNER_FILE.read_text().strip()
    except FileNotFoundError:
        return None
    # the owner's node dir holds its state until its `down` finishes
    return where if (Path(where) / "node" / "state.json").exists() else None


def _claim() -> None:
    with OWNER_LOCK.open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        other = owner()
        if other and other != _me():
            raise RuntimeError(f"this machine's real node belongs to the cluster in {other} (another "
                               "checkout): one containerd, node address and bridge per machine; run "
                               "`lupita cluster down` there first")
        _save_state({**_state(), "owner": True})
        OWNER_FILE.write_text(_me())


def up() -> None:
    """Start the real node next to the control plane (which must be up)."""
    if all(s["healthy"] for s in status().values()) and manager._node_ready(NODE):
        manager.open_service_range()
        return
    try:
        _up()
    except BaseException:
        if owner() in (None, _me()):  # never another checkout's node's route (its kube-proxy runs)
            manager.close_service_range()
        raise


def _up() -> None:
    _claim()
    ensure_debian_packages()
    for name in ("kubelet", "kube-proxy", "kubectl"):
        tools.ensure(name)
    pause_image()
    state = _state()
    state.setdefault("netns_before", sorted(p.name for p in NETNS_DIR.glob("*")) if NETNS_DIR.exists() else [])
    state["address"] = True
    _save_state(state)
    _node_address()
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    KUBELET_ROOT.mkdir(parents=True, exist_ok=True)
    if not status()["containerd"]["healthy"]:
        CONTAINERD.stop()
        say("starting containerd (the real node's runtime)")
        CONTAINERD.spawn(["containerd", "--config", str(_containerd_config())])
        manager._wait("containerd", lambda: CONTAINERD_SOCK.exists() and _ctr("version", check=False).returncode == 0,
                      CONTAINERD, 60)
    load_images([PAUSE_IMAGE])
    config, kubeconfig = _kubelet_config(manager._pki())
    if not status()["kubelet"]["healthy"]:
        KUBELET.stop()
        say(f"starting the kubelet of node {NODE} ({NODE_IP})")
        KUBELET.spawn([str(tools.ensure("kubelet")), f"--config={config}", f"--kubeconfig={kubeconfig}",
                       f"--root-dir={KUBELET_ROOT}", f"--hostname-override={NODE}", f"--node-ip={NODE_IP}"])
        manager._wait("the kubelet", lambda: status()["kubelet"]["healthy"], KUBELET, 120)
    manager._wait(f"node {NODE} Ready", lambda: manager._node_ready(NODE), KUBELET, 120)
    _start_kube_proxy()


def _our_shims() -> list[int]:
    """containerd shims started for this node's containerd (they outlive it, re-parented)."""
    pids = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmd and cmd[0].endswith(b"containerd-shim-runc-v2") and str(CONTAINERD_SOCK).encode() in cmd:
            pids.append(int(proc.name))
    return pids


def _unmount_under(*roots: Path) -> int:
    mounts = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        target = line.split()[4].replace("\\040", " ")
        if any(target == str(r) or target.startswith(f"{r}/") for r in roots):
            mounts.append(target)
    for target in sorted(set(mounts), key=lambda t: t.count("/"), reverse=True):
        _sh("umount", "-l", target, check=False)
    return len(set(mounts))


def _remove_kube_chains() -> list[str]:
    """The iptables and ip6tables chains the kubelet and kube-proxy (KUBE-*) and CNI portmap
    (CNI-*) added, with their jumps."""
    removed = []
    for cmd, table in [(c, t) for c in ("iptables", "ip6tables") if shutil.which(c)
                       for t in ("filter", "nat", "mangle")]:
        rules = _sh(cmd, "-t", table, "-S", check=False).stdout.splitlines()
        chains = [r.split()[1] for r in rules if r.startswith("-N ") and r.split()[1].startswith(("KUBE-", "CNI-"))]
        for rule in rules:  # jumps into them from the built-in chains, first
            parts = rule.split()
            if parts[:1] == ["-A"] and "-j" in parts and parts[parts.index("-j") + 1] in chains \
                    and parts[1] not in chains:
                _sh(cmd, "-t", table, "-D", *parts[1:], check=False)
        for chain in chains:
            _sh(cmd, "-t", table, "-F", chain, check=False)
        for chain in chains:
            if _sh(cmd, "-t", table, "-X", chain, check=False).returncode == 0:
                removed.append(f"{cmd}/{table}/{chain}")
    return removed


def down() -> list[str]:
    """Take down everything the real node made (safe to call when it never ran; leaves another
    checkout's real node alone)."""
    other = owner()
    if other and other != _me():
        return []
    done = []
    # first of all: the service range back to its blackhole (before kube-proxy's rules go)
    if manager.close_service_range():
        done.append(f"service range {manager.SERVICE_CIDR} via lo")
    state = _state()
    if not state and not (CONTAINERD.pid() or KUBELET.pid() or KUBE_PROXY.pid() or RUN_DIR.exists()
                          or KUBELET_ROOT.exists()):
        return done
    if KUBELET.pid() and manager.status()["kube-apiserver"]["healthy"]:
        # let the kubelet stop the pods itself (CNI DEL, volume unmounts), then the Node
        manager.kubectl("delete", "pods", "--all-namespaces", "--field-selector", f"spec.nodeName={NODE}",
                        "--grace-period=5", "--wait=true", "--timeout=60s", check=False)
    if KUBE_PROXY.stop():
        done.append("kube-proxy")
    if shutil.which("iptables") and Path(tools.bin_dir() / "kube-proxy").exists():
        # its own cleanup of every proxy mode's rules (iptables, ipvs, nftables; both families)
        _sh(str(tools.bin_dir() / "kube-proxy"), "--cleanup", check=False, timeout=60)
    if KUBELET.stop():
        done.append("kubelet")
    if CONTAINERD.pid() and CONTAINERD_SOCK.exists():
        for task in _ctr("tasks", "ls", "-q", check=False).stdout.split():
            _ctr("tasks", "kill", "-s", "SIGKILL", task, check=False)
    if CONTAINERD.stop():
        done.append("containerd")
    for pid in _our_shims():
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass
    before = set(state.get("netns_before", []))
    netns = [p.name for p in NETNS_DIR.glob("cni-*")] if NETNS_DIR.exists() else []
    for name in netns:
        if name not in before:
            _sh("ip", "netns", "delete", name, check=False)
    unmounted = _unmount_under(KUBELET_ROOT, RUN_DIR, node_dir())
    if unmounted:
        done.append(f"{unmounted} mounts")
    if _sh("ip", "link", "show", BRIDGE, check=False).returncode == 0:
        _sh("ip", "link", "delete", BRIDGE, check=False)
        done.append(f"bridge {BRIDGE}")
    chains = _remove_kube_chains()
    if chains:
        done.append(f"iptables chains {', '.join(chains)}")
    if NODE_IP in _sh("ip", "-4", "addr", "show", "dev", "lo").stdout:
        _sh("ip", "addr", "del", f"{NODE_IP}/32", "dev", "lo", check=False)
        done.append(f"address {NODE_IP}")
    _sh("ip", "route", "del", "blackhole", NODE_RANGE, check=False)
    if manager.status()["kube-apiserver"]["healthy"]:
        manager.kubectl("delete", "node", NODE, "--ignore-not-found", check=False)
    for path in (KUBELET_ROOT, RUN_DIR, node_dir()):
        shutil.rmtree(path, ignore_errors=True)
    if OWNER_FILE.exists() and OWNER_FILE.read_text().strip() == _me():
        OWNER_FILE.unlink(missing_ok=True)
    return done
