"""Every environment variable the chart sets is a real setting of the service in that container, and
what it sets is accepted by that service's settings classes.

The names come from the pydantic-settings classes themselves (env_prefix + field name, or a
field's alias), per container: the bridge (BridgeSettings), each stream stage (WorkerSettings +
that stage's class from stream_processor.settings.STAGE_SETTINGS, exactly what `lupita worker`
builds), the context API (ContextApiSettings), the telephony gateway (GatewaySettings) and the load
generator (LoadgenSettings).
"""

from __future__ import annotations

import base64
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "lupita"
LOCAL = CHART / "values-local.yaml"
EKS = CHART / "values-eks.yaml"
KUBE_VERSION = "1.34.2"
STAGES = ("recorder", "vad", "transcriber", "understanding")
# variants that switch on every optional env var the chart can set
VARIANTS = {
    "default": ([], []),
    "local": ([LOCAL], []),
    "eks": ([EKS], []),
    "everything-on": ([EKS], [
        "loadgen.enabled=true", "secrets.cloudApis.name=lupita-cloud", "secrets.s3.name=lupita-s3",
        "streamProcessor.stages.transcriber.gpu.enabled=true", "mediaBridge.allowUnauthenticated=true",
        "streamProcessor.settings.LUPITA_METRICS_HOST=0.0.0.0",
        "streamProcessor.stages.vad.settings.LUPITA_VAD_THREADS=2",
        "telephonyGateway.settings.LUPITA_GATEWAY_REORDER_WINDOW=64",
        "telephonyGateway.bridgeTarget=bridge.example:50061",
        "telephonyGateway.chime.recordingConsent=true", "telephonyGateway.chime.consentSource=ivr",
        "telephonyGateway.chime.startMarginSeconds=3", "telephonyGateway.chime.regionLabel=us",
        "telephonyGateway.chime.kvsEndpoint=https://kinesisvideo.us-east-1.amazonaws.com",
        "telephonyGateway.chime.getMediaEndpoint=https://s-1234abcd.kinesisvideo.us-east-1.amazonaws.com",
        "telephonyGateway.chime.groupId=gw-pods", "telephonyGateway.chime.sessionTimeoutMs=15000",
    ]),
    "hmac": ([EKS], ["contextApi.authMode=hmac"]),
}


@pytest.fixture(scope="session")
def helm() -> Path:
    from lupita_dev.cluster.tools import ensure

    return ensure("helm")


def render(helm: Path, values: list[Path], sets: list[str]) -> list[dict[str, Any]]:
    cmd = [str(helm), "template", "lupita", str(CHART), "--namespace", "lupita", "--kube-version", KUBE_VERSION]
    for path in values:
        cmd += ["--values", str(path)]
    for item in sets:
        cmd += ["--set", item]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def settings_classes(component: str) -> list[type]:
    """The settings classes the process in a container of ``component`` builds."""
    if component == "media-bridge":
        from media_bridge.settings import BridgeSettings

        return [BridgeSettings]
    if component in STAGES:
        from stream_processor.settings import STAGE_SETTINGS, WorkerSettings

        return [WorkerSettings, STAGE_SETTINGS[component]]
    if component == "context-api":
        from context_api.settings import ContextApiSettings

        return [ContextApiSettings]
    if component == "telephony-gateway":
        from telephony_gateway.settings import GatewaySettings

        return [GatewaySettings]
    if component == "migrations":  # `lupita migrate` (lupita/db.py: CommonSettings().postgres_dsn)
        from lupita.config import CommonSettings

        return [CommonSettings]
    if component == "loadgen":
        from loadgen.settings import LoadgenSettings

        return [LoadgenSettings]
    raise AssertionError(f"no settings known for component {component!r}")


def env_names(cls: type) -> set[str]:
    """The environment names a pydantic-settings class reads (upper-case; case-insensitive by default)."""
    prefix = cls.model_config.get("env_prefix", "")
    names = set()
    for field, info in cls.model_fields.items():
        aliases = [a for a in (info.alias, info.validation_alias) if isinstance(a, str)]
        names |= {a.upper() for a in aliases} if aliases else {f"{prefix}{field}".upper()}
    return names


def containers(docs: list[dict]) -> list[tuple[str, dict]]:
    out = []
    for d in docs:
        if d["kind"] in ("Deployment", "StatefulSet", "Job"):
            comp = d["metadata"]["labels"]["app.kubernetes.io/component"]
            for c in d["spec"]["template"]["spec"]["containers"]:
                out.append((comp, c))
    return out


def unknown_settings(docs: list[dict]) -> dict[str, set[str]]:
    """Per component: the LUPITA_* names set in its containers that none of its classes reads."""
    bad: dict[str, set[str]] = {}
    for comp, c in containers(docs):
        known = set().union(*(env_names(cls) for cls in settings_classes(comp)))
        lupita = {e["name"] for e in c.get("env", []) if e["name"].startswith("LUPITA_")}
        if lupita - known:
            bad.setdefault(comp, set()).update(lupita - known)
    return bad


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_env_var_the_chart_sets_is_a_setting_of_its_service(helm, variant):
    docs = render(helm, *VARIANTS[variant])
    comps = {comp for comp, _ in containers(docs)}
    assert {"media-bridge", *STAGES, "context-api", "telephony-gateway"} <= comps
    for comp, c in containers(docs):
        names = [e["name"] for e in c.get("env", [])]
        assert names and all(n.startswith("LUPITA_") for n in names), comp
        assert len(names) == len(set(names)), (comp, sorted(n for n in names if names.count(n) > 1))
    assert unknown_settings(docs) == {}


def test_a_name_no_service_reads_is_caught(helm):
    """The check can fail: a setting of another service, and a made-up one, are both reported."""
    docs = render(helm, [], ["mediaBridge.settings.LUPITA_VAD_THREADS=2",
                             "streamProcessor.stages.vad.settings.LUPITA_NOT_A_SETTING=1",
                             "streamProcessor.settings.LUPITA_ASR_THREADS=2",
                             "telephonyGateway.settings.LUPITA_GRPC_HOST=0.0.0.0"])
    # LUPITA_ASR_THREADS under the settings every stage gets: only the transcriber reads it
    assert unknown_settings(docs) == {"media-bridge": {"LUPITA_VAD_THREADS"},
                                      "telephony-gateway": {"LUPITA_GRPC_HOST"},
                                      "vad": {"LUPITA_NOT_A_SETTING", "LUPITA_ASR_THREADS"},
                                      "recorder": {"LUPITA_ASR_THREADS"}, "understanding": {"LUPITA_ASR_THREADS"}}


# Stand-ins for what the Secrets hold, valid for the settings' validators (never real keys).
SECRET_STANDINS = {
    "LUPITA_PHONE_HMAC_KEY": base64.b64encode(b"h" * 32).decode(),
    "LUPITA_PHONE_ENCRYPTION_KEY": base64.b64encode(b"e" * 32).decode(),
    "LUPITA_POSTGRES_DSN": "postgresql://lupita@127.0.0.1:15432/lupita",
    "LUPITA_CONTEXT_API_HMAC_SECRET": "x" * 32,
}


@pytest.mark.parametrize("variant", ["local", "eks", "everything-on", "hmac"])
def test_the_services_accept_the_values_the_chart_sets(helm, variant, monkeypatch):
    """Each container's environment (Secrets replaced by stand-ins) builds its settings objects:
    types, ranges and cross-field rules (e.g. heartbeat vs session timeout) all hold."""
    docs = render(helm, *VARIANTS[variant])
    import os

    for comp, c in containers(docs):
        env = {}
        for e in c.get("env", []):
            if "value" in e:
                env[e["name"]] = e["value"]
            elif "resourceFieldRef" in e["valueFrom"]:
                env[e["name"]] = resource_field(c, e["valueFrom"]["resourceFieldRef"])
            else:
                env[e["name"]] = SECRET_STANDINS.get(e["name"], "standin-token")
        for key in [k for k in os.environ if k.startswith("LUPITA_")]:
            monkeypatch.delenv(key)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        for cls in settings_classes(comp):
            try:
                obj = cls()
            except ValidationError as exc:
                raise AssertionError(f"{variant}: {comp}: {cls.__name__} refuses the chart's env: {exc}") from None
            for name, value in env.items():  # and each literal value arrived as set
                field = name.removeprefix("LUPITA_").lower()
                if field in type(obj).model_fields and name in literal(c):
                    got = getattr(obj, field)
                    got = got.get_secret_value() if hasattr(got, "get_secret_value") else got
                    assert str(got).lower() in (value.lower(), str(type(got)(value)).lower()) \
                        or _same_number(got, value) or _same_path(got, value), (variant, comp, name, got, value)


def cpu_millis(quantity: str | int | float) -> int:
    text = str(quantity)
    return int(text[:-1]) if text.endswith("m") else round(float(text) * 1000)


def resource_field(c: dict, ref: dict) -> str:
    """What the kubelet puts in a downward-API resourceFieldRef of CPU: ceil(limit / divisor)."""
    assert ref["containerName"] == c["name"] and ref["resource"] == "limits.cpu", ref
    limit = c["resources"]["limits"]["cpu"]  # without a limit it would be the node's CPU: the chart avoids that
    return str(-(-cpu_millis(limit) // cpu_millis(ref.get("divisor", "1"))))


def literal(c: dict) -> set[str]:
    return {e["name"] for e in c.get("env", []) if "value" in e}


def _same_number(got: Any, value: str) -> bool:
    try:
        return float(got) == float(value)
    except (TypeError, ValueError):
        return False


def _same_path(got: Any, value: str) -> bool:
    return isinstance(got, Path) and got == Path(value)


def test_default_values_leave_the_context_api_to_name_its_assistant(helm, monkeypatch):
    """The one required setting without a safe default: the chart leaves it empty and the service
    says so at start (NOTES.txt warns too)."""
    from context_api.settings import ContextApiSettings

    docs = render(helm, [], [])
    (c,) = [c for comp, c in containers(docs) if comp == "context-api"]
    env = {e["name"]: e.get("value", SECRET_STANDINS.get(e["name"], "standin-token")) for e in c["env"]}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ValidationError, match="LUPITA_CONTEXT_API_ASSISTANT_ID is empty"):
        ContextApiSettings()
