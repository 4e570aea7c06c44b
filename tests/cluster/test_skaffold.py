"""skaffold.yaml stays in step with the Dockerfiles and the chart (no skaffold binary here: the
module proxy does not serve it, so the file is checked against what it names)."""

from __future__ import annotations

import yaml
from conftest import CHART, ROOT


def _config() -> dict:
    return yaml.safe_load((ROOT / "skaffold.yaml").read_text())


def _has_path(values: dict, dotted: str) -> bool:
    node = values
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def test_every_artifact_builds_from_an_existing_dockerfile_with_its_base():
    artifacts = _config()["build"]["artifacts"]
    for art in artifacts:
        assert (ROOT / art["context"] / art["docker"]["dockerfile"]).is_file(), art
        if art["image"] != "lupita-base":
            assert art["requires"] == [{"image": "lupita-base", "alias": "BASE"}], art


def test_helm_values_set_by_skaffold_are_real_chart_values_and_cover_every_service_image():
    config = _config()
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    (release,) = config["deploy"]["helm"]["releases"]
    assert (ROOT / release["chartPath"]).resolve() == CHART
    keys = [*release["setValues"], *release["setValueTemplates"]]
    assert [k for k in keys if not _has_path(values, k)] == []
    services = {a["image"] for a in config["build"]["artifacts"]} - {"lupita-base"}
    templated = " ".join(release["setValueTemplates"].values())
    assert all(f"IMAGE_REPO_{s.replace('-', '_')}" in templated for s in services), templated


def test_profiles_name_existing_values_files():
    for profile in _config()["profiles"]:
        for patch in profile.get("patches", []):
            if patch["path"].endswith("/valuesFiles"):
                assert all((ROOT / f).is_file() for f in patch["value"]), (profile["name"], patch)


def test_the_no_loadgen_profile_removes_the_load_generator_and_only_it():
    """The profile removes an artifact by index: adding an image before it would silently drop
    another one from production builds."""
    artifacts = _config()["build"]["artifacts"]
    (profile,) = [p for p in _config()["profiles"] if p["name"] == "no-loadgen"]
    removed = [int(patch["path"].rsplit("/", 1)[1]) for patch in profile["patches"] if patch["op"] == "remove"]
    assert [artifacts[i]["image"] for i in removed] == ["lupita-loadgen"]


def test_every_service_dockerfile_is_built():
    """Each services/<name>/Dockerfile is an artifact (a new service's image is not forgotten)."""
    built = {a["docker"]["dockerfile"] for a in _config()["build"]["artifacts"]}
    dockerfiles = {str(p.relative_to(ROOT)) for p in (ROOT / "services").glob("*/Dockerfile")}
    assert dockerfiles - built == set()
