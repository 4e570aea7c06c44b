"""k8s/: the namespace, the Strimzi Kafka and its topics, the ACK S3 buckets and the IAM policies.

The custom resources are applied to the real API server (strict validation) after their CRDs
are installed (k8s/crds: minimal schemas, since no registry package carries Strimzi's or ACK's);
the policies are checked for least privilege: only the recorder writes the legal archive, nothing
can weaken its Object Lock, and the telephony gateway only reads the Chime Voice Connector's KVS streams.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import ROOT

K8S = ROOT / "k8s"
MANIFESTS = [K8S / "namespace.yaml", K8S / "kafka" / "kafka.yaml", K8S / "kafka" / "topics.yaml",
             K8S / "s3" / "buckets.yaml"]
LEGAL = "saludcompartida-legal-archive"
ACTIVE = "saludcompartida-companion-active"
RECORDER_ROLE = "arn:aws:iam::123456789012:role/lupita-recorder"
NEVER_ALLOWED = {"s3:BypassGovernanceRetention", "s3:PutBucketObjectLockConfiguration", "s3:DeleteBucket", "s3:*"}


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _json(name: str) -> dict:
    return json.loads((K8S / name).read_text())


def _statements(policy: dict) -> list[dict]:
    return [{**s, "Action": [s["Action"]] if isinstance(s["Action"], str) else s["Action"],
             "Resource": [s["Resource"]] if isinstance(s["Resource"], str) else s["Resource"]}
            for s in policy["Statement"]]


@pytest.fixture(scope="module")
def k8s_crds(kubectl) -> None:
    for path in sorted((K8S / "crds").glob("*.yaml")):
        kubectl("apply", "--server-side", "-f", str(path))
        kubectl("wait", "--for=condition=Established", "--timeout=60s", "-f", str(path))


def test_every_k8s_resource_is_accepted_by_the_api_server(kubectl, k8s_crds):
    expected = [f"{d['kind'].lower()}" for path in MANIFESTS for d in _docs(path)]
    try:
        out = kubectl("apply", "--validate=strict", *(a for p in MANIFESTS for a in ("-f", str(p)))).stdout
        created = [line for line in out.splitlines() if line.endswith((" created", " unchanged", " configured"))]
        assert len(created) == len(expected), out
        topics = json.loads(kubectl("get", "kafkatopics", "-n", "kafka", "-o", "json").stdout)["items"]
        from lupita import topics as code_topics

        assert len(topics) == len(code_topics.EVERY)
    finally:
        kubectl("delete", "--ignore-not-found", "--wait=true", "--timeout=60s",
                *(a for p in reversed(MANIFESTS) for a in ("-f", str(p))))


def test_a_misspelt_field_is_refused(kubectl, k8s_crds):
    topic = _docs(K8S / "kafka" / "topics.yaml")[0]
    topic["metadata"]["namespace"] = "default"
    topic["spec"]["partitons"] = topic["spec"].pop("partitions")
    out = kubectl("apply", "--dry-run=server", "--validate=strict", "-f", "-", input=json.dumps(topic), check=False)
    assert out.returncode != 0 and "partitons" in out.stderr, out.stderr


def test_topics_match_the_code_and_the_eks_values():
    from lupita import topics

    values = yaml.safe_load((ROOT / "charts" / "lupita" / "values-eks.yaml").read_text())["kafka"]
    declared = {d["spec"]["topicName"]: d["spec"] for d in _docs(K8S / "kafka" / "topics.yaml")}
    assert set(declared) == {values["topicPrefix"] + name for name in topics.EVERY}
    assert {(s["partitions"], s["replicas"]) for s in declared.values()} == {(values["partitions"], values["replication"])}


def test_the_legal_bucket_is_locked_versioned_kms_encrypted_and_archived_after_90_days():
    buckets = {d["spec"]["name"]: d["spec"] for d in _docs(K8S / "s3" / "buckets.yaml")}
    legal, active = buckets[LEGAL], buckets[ACTIVE]
    assert legal["objectLockEnabledForBucket"] is True and "objectLockEnabledForBucket" not in active
    assert _json("s3/object-lock.json") == {
        "ObjectLockEnabled": "Enabled", "Rule": {"DefaultRetention": {"Mode": "COMPLIANCE", "Days": 365}}}
    for spec in (legal, active):
        assert spec["versioning"]["status"] == "Enabled"
        rule = spec["encryption"]["rules"][0]["applyServerSideEncryptionByDefault"]
        assert rule["sseAlgorithm"] == "aws:kms" and rule["kmsMasterKeyID"].endswith("alias/lupita-recordings")
        assert all(spec["publicAccessBlock"].values())
    (transition,) = legal["lifecycle"]["rules"][0]["transitions"]
    assert transition == {"days": 90, "storageClass": "GLACIER"}
    assert json.loads(legal["policy"]) == _json("s3/legal-bucket-policy.json")


def test_only_the_recorder_writes_the_legal_archive_and_nothing_weakens_the_lock():
    legal_objects = f"arn:aws:s3:::{LEGAL}/*"
    writers = []
    for path in sorted((K8S / "iam").glob("*-policy.json")):
        for s in _statements(json.loads(path.read_text())):
            assert s["Effect"] == "Allow", (path.name, s)
            assert not NEVER_ALLOWED & set(s["Action"]), (path.name, s)
            assert all(not r.endswith(":*") and r != "*" for r in s["Resource"]), (path.name, s)
            if {"s3:PutObject", "s3:PutObjectRetention"} & set(s["Action"]) and legal_objects in s["Resource"]:
                writers.append(path.name)
    assert writers == ["lupita-recorder-policy.json"]

    bucket_policy = {s["Sid"]: s for s in _statements(_json("s3/legal-bucket-policy.json"))}
    only_recorder = bucket_policy["OnlyTheRecorderWrites"]
    assert only_recorder["Effect"] == "Deny" and "s3:PutObject" in only_recorder["Action"]
    assert only_recorder["Condition"] == {"ArnNotEquals": {"aws:PrincipalArn": RECORDER_ROLE}}
    lock = bucket_policy["NobodyWeakensTheLock"]
    assert lock["Effect"] == "Deny" and lock["Principal"] == "*" and "Condition" not in lock
    assert {"s3:BypassGovernanceRetention", "s3:PutBucketObjectLockConfiguration"} <= set(lock["Action"])


def test_the_gateway_role_only_reads_the_chime_voice_connector_streams():
    """GetDataEndpoint and GetMedia (what telephony_gateway.chime calls) on the Voice Connector's
    streams (ChimeVoiceConnector-*), nothing else: no writes, no other stream, no other service."""
    (statement,) = _statements(_json("iam/lupita-telephony-gateway-policy.json"))
    assert statement["Effect"] == "Allow" and "Condition" not in statement
    assert sorted(statement["Action"]) == ["kinesisvideo:GetDataEndpoint", "kinesisvideo:GetMedia"]
    (resource,) = statement["Resource"]
    assert resource.startswith("arn:aws:kinesisvideo:us-east-1:123456789012:stream/ChimeVoiceConnector-")
    assert resource.endswith("-*/*") and resource.count("*") == 2
    eks = yaml.safe_load((ROOT / "charts" / "lupita" / "values-eks.yaml").read_text())["telephonyGateway"]
    assert eks["serviceAccount"]["annotations"]["eks.amazonaws.com/role-arn"].endswith(":role/lupita-telephony-gateway")
    assert f":kinesisvideo:{eks['chime']['region']}:" in resource


def test_service_account_roles_trust_only_their_own_service_account():
    for path in sorted((K8S / "iam").glob("*-trust.json")):
        (statement,) = json.loads(path.read_text())["Statement"]
        subject = next(v for k, v in statement["Condition"]["StringEquals"].items() if k.endswith(":sub"))
        assert subject == f"system:serviceaccount:lupita:{path.name.removesuffix('-trust.json')}"
