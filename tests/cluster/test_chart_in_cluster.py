"""The chart, proven by a real Kubernetes 1.34 API server (kwok fake node).

For the default values, the local values and the EKS values: every object the chart renders
is accepted by ``kubectl apply --dry-run=server --validate=strict`` (the server's own schemas,
unknown fields refused; the custom resources against KEDA's and the Prometheus operator's
CRDs); ``helm install --wait`` succeeds and every workload is Ready; ``helm uninstall``
leaves nothing of the release behind. kwok runs no containers: the images and the probes are
proven elsewhere (the real node), the API objects and the scheduling here.
"""

from __future__ import annotations

import hashlib
import json
import uuid

import pytest
import yaml
from conftest import CHART
from waits import wait_for

SCENARIOS = {"default": None, "local": "values-local.yaml", "eks": "values-eks.yaml"}
WORKLOAD_KINDS = ("deployments", "statefulsets", "daemonsets")
# objects every namespace has, which are not the release's
NAMESPACE_DEFAULTS = {("ConfigMap", "kube-root-ca.crt"), ("ServiceAccount", "default")}


def _values_args(scenario: str) -> list[str]:
    name = SCENARIOS[scenario]
    if name is None:
        return []
    path = CHART / name
    assert path.exists(), f"the chart has no {name} (the {scenario} scenario)"
    return ["-f", str(path)]


def _render(helm, scenario: str, release: str, namespace: str) -> list[dict]:
    from lupita_dev.cluster import crds, tools

    api_args = [arg for v in crds.api_versions() for arg in ("--api-versions", v)]
    out = helm("template", release, str(CHART), "--namespace", namespace,
               "--kube-version", tools.KUBERNETES_VERSION, *api_args, *_values_args(scenario))
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def _namespace(kubectl, prefix: str) -> str:
    """A fresh namespace (a deleted one may still be terminating from an earlier session)."""
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    kubectl("create", "namespace", name)
    kubectl("wait", "--for=jsonpath={.status.phase}=Active", f"namespace/{name}", "--timeout=30s")
    return name


def _ensure_node_pools(kubectl, objects: list[dict]) -> None:
    """A kwok node for every node pool the rendered pods ask for (nodeSelector, tolerated
    taints, extended resources such as nvidia.com/gpu): the test cluster stands in for the
    EKS node groups the values target."""
    from lupita_dev.cluster import manager

    for obj in objects:
        pod = (obj.get("spec", {}).get("template", {}) or {}).get("spec")
        if obj.get("kind") == "Job":
            pod = obj["spec"]["template"]["spec"]
        if not pod or not pod.get("nodeSelector"):
            continue
        selector = pod["nodeSelector"]
        taints = [{"key": t["key"], "value": t.get("value", "true"), "effect": t.get("effect", "NoSchedule")}
                  for t in pod.get("tolerations", []) if t.get("key")]
        extended = {name: "8" for c in pod.get("containers", [])
                    for name in (c.get("resources", {}).get("limits") or {}) if "/" in name}
        name = "lupita-kwok-pool-" + hashlib.sha256(json.dumps(selector, sort_keys=True).encode()).hexdigest()[:8]
        node = json.loads(json.dumps(manager.KWOK_NODE_MANIFEST))
        node["metadata"]["name"] = name
        node["metadata"]["labels"].update(selector, **{"kubernetes.io/hostname": name})
        node["spec"] = {"taints": taints}
        for field in ("allocatable", "capacity"):
            node["status"][field].update(extended)
        kubectl("apply", "-f", "-", input=json.dumps(node))
        kubectl("wait", "--for=condition=Ready", f"node/{name}", "--timeout=60s")


def _release_leftovers(kubectl, release: str, namespace: str) -> list[str]:
    """Everything of the release still in the cluster: any object in the namespace beyond its
    defaults, and any cluster-scoped object labelled with the release."""
    left = []
    for namespaced in ("true", "false"):
        kinds = kubectl("api-resources", "--verbs=list", f"--namespaced={namespaced}", "-o", "name").stdout.split()
        kinds = [k for k in kinds if k not in ("events", "events.events.k8s.io")]
        scope = ["-n", namespace] if namespaced == "true" else ["-l", f"app.kubernetes.io/instance={release}"]
        items = json.loads(kubectl("get", ",".join(kinds), *scope, "-o", "json").stdout)["items"]
        for item in items:
            kind, name = item["kind"], item["metadata"]["name"]
            if namespaced == "true" and (kind, name) in NAMESPACE_DEFAULTS:
                continue
            if namespaced == "false" and kind == "Namespace":
                continue
            left.append(f"{kind}/{name}")
    return left


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_rendered_object_is_accepted_by_the_api_server(scenario, helm, kubectl, crds):
    namespace = _namespace(kubectl, f"dry-run-{scenario}")
    objects = _render(helm, scenario, "lupita", namespace)
    assert objects, "the chart rendered nothing"
    out = kubectl("apply", "--dry-run=server", "--validate=strict", "-n", namespace, "-f", "-",
                  input=yaml.safe_dump_all(objects), check=False)
    assert out.returncode == 0, f"the API server refused objects of the {scenario} values:\n{out.stderr}"
    accepted = [line for line in out.stdout.splitlines() if line.endswith("(server dry run)")]
    assert len(accepted) == len(objects), (len(accepted), len(objects), out.stdout)
    kubectl("delete", "namespace", namespace, "--wait=false")


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_helm_install_becomes_ready_and_uninstall_leaves_nothing(scenario, helm, kubectl, crds):
    release, namespace = f"lupita-{scenario}", _namespace(kubectl, f"install-{scenario}")
    _ensure_node_pools(kubectl, _render(helm, scenario, release, namespace))

    helm("install", release, str(CHART), "--namespace", namespace, *_values_args(scenario),
         "--wait", "--wait-for-jobs", "--timeout", "180s")
    workloads = json.loads(kubectl("get", ",".join(WORKLOAD_KINDS), "-n", namespace, "-o", "json").stdout)["items"]
    assert workloads, "the release has no workload"
    not_ready = {w["metadata"]["name"]: (w["status"].get("readyReplicas", 0), w["spec"].get("replicas", 1))
                 for w in workloads if w["status"].get("readyReplicas", 0) != w["spec"].get("replicas", 1)}
    assert not not_ready, f"workloads not Ready (ready, wanted): {not_ready}"
    pods = json.loads(kubectl("get", "pods", "-n", namespace, "-o", "json").stdout)["items"]
    assert pods and all(p["status"].get("phase") in ("Running", "Succeeded") for p in pods), \
        [(p["metadata"]["name"], p["status"].get("phase")) for p in pods]
    # values-eks migrates in a pre-install hook Job (kwok completes Job pods), with its own
    # NetworkPolicy hook just before it: helm waited for the Job to succeed before creating the
    # workloads, then deleted both (hook-succeeded)
    hooks = [d for d in yaml.safe_load_all(helm("get", "hooks", release, "--namespace", namespace).stdout) if d]
    migrations = sorted(h["kind"] for h in hooks if h["metadata"]["name"] == f"{release}-migrations")
    assert migrations == (["Job", "NetworkPolicy"] if scenario == "eks" else []), \
        [(h["kind"], h["metadata"]["name"]) for h in hooks]
    for kind in ("jobs", "networkpolicies"):
        items = json.loads(kubectl("get", kind, "-n", namespace, "-o", "json").stdout)["items"]
        assert not [i["metadata"]["name"] for i in items if i["metadata"]["name"].endswith("-migrations")], kind

    helm("uninstall", release, "--namespace", namespace, "--wait", "--timeout", "120s")
    # the garbage collector removes the ReplicaSets and pods after their owners: poll until it has
    left: list[str] = []

    def nothing_left() -> bool:
        left[:] = _release_leftovers(kubectl, release, namespace)
        return not left

    try:
        wait_for(f"nothing of {release} left", nothing_left, timeout=60, interval=1)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; still there: {left}") from None
    kubectl("delete", "namespace", namespace, "--wait=false")


def test_a_failed_migration_job_leaves_no_network_policy_behind(helm, kubectl, crds):
    """values-eks with the migration Job's pod failing (kwok's lupita-pod-fail stage, backoffLimit 0):
    `helm install` fails on its pre-install hook; the Job stays for its logs, its NetworkPolicy (the
    earlier hook of the same run) is deleted by Helm; no workload was created."""
    from lupita_dev.cluster import manager

    release, namespace = "lupita-failing-migration", _namespace(kubectl, "install-failing-migration")
    _ensure_node_pools(kubectl, _render(helm, "eks", release, namespace))
    annotation = manager.POD_FAIL_ANNOTATION.replace(".", "\\.")
    out = helm("install", release, str(CHART), "--namespace", namespace, *_values_args("eks"),
               "--set-string", f"migrations.job.podAnnotations.{annotation}=true", "--set", "migrations.job.backoffLimit=0",
               "--wait", "--wait-for-jobs", "--timeout", "120s", check=False)
    try:
        assert out.returncode != 0 and "pre-install" in out.stderr, (out.returncode, out.stderr[-2000:])
        jobs = json.loads(kubectl("get", "jobs", "-n", namespace, "-o", "json").stdout)["items"]
        assert [j["metadata"]["name"] for j in jobs] == [f"{release}-migrations"]
        assert any(c["type"] == "Failed" and c["status"] == "True" for c in jobs[0]["status"].get("conditions", []))
        policies = json.loads(kubectl("get", "networkpolicies", "-n", namespace, "-o", "json").stdout)["items"]
        assert [p["metadata"]["name"] for p in policies] == []
        workloads = json.loads(kubectl("get", ",".join(WORKLOAD_KINDS), "-n", namespace, "-o", "json").stdout)["items"]
        assert workloads == []
    finally:
        helm("uninstall", release, "--namespace", namespace, "--wait", "--timeout", "60s", check=False)
        kubectl("delete", "namespace", namespace, "--wait=false", check=False)
