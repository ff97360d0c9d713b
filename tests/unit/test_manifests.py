"""Cluster and deploy manifests: the `ray up` YAML against the autoscaler schema shipped in
the ray package (read as JSON, ray is not imported), KubeRay manifests structurally."""

import copy
import importlib.util
import json
from pathlib import Path

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
RAY_VERSION = "2.60.0"


def load(rel: str) -> dict:
    return yaml.safe_load((REPO / rel).read_text())


@pytest.fixture(scope="module")
def ray_up_schema() -> dict:
    ray_dir = Path(importlib.util.find_spec("ray").origin).parent  # locates, does not import
    return json.loads((ray_dir / "autoscaler" / "ray-schema.json").read_text())


def test_ray_up_yaml_matches_autoscaler_schema(ray_up_schema):
    cfg = load("cluster/aws.yaml")
    jsonschema.validate(cfg, ray_up_schema)
    types = cfg["available_node_types"]
    assert cfg["head_node_type"] in types
    rollout, learner = types["rollout_gpu"]["resources"], types["learner_gpu"]["resources"]
    assert rollout["GPU"] >= 1 and rollout["rollout"] == rollout["GPU"]  # one engine per GPU
    assert learner["GPU"] >= 1 and learner["learner"] == learner["GPU"]
    assert "learner" not in rollout and "rollout" not in learner  # pools stay separate
    assert RAY_VERSION in cfg["docker"]["image"]


def test_schema_check_rejects_a_broken_ray_up_yaml(ray_up_schema):
    """The validation above can fail: a node type without node_config, or a typo'd key."""
    bad = copy.deepcopy(load("cluster/aws.yaml"))
    del bad["available_node_types"]["rollout_gpu"]["node_config"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, ray_up_schema)
    bad = copy.deepcopy(load("cluster/aws.yaml"))
    bad["max_worker"] = 3
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, ray_up_schema)


def _containers(group: dict) -> list[dict]:
    return group["template"]["spec"]["containers"]


def _check_group(group: dict, head: bool) -> None:
    assert isinstance(group["rayStartParams"], dict)
    assert all(isinstance(v, str) for v in group["rayStartParams"].values()), "rayStartParams values are strings"
    for c in _containers(group):
        assert c["image"] and ":" in c["image"], "image pinned to a tag"
        env = {e["name"]: e for e in c.get("env", [])}
        assert env["RAY_AUTH_MODE"]["value"] == "token" and "RAY_AUTH_TOKEN" in env
        assert c["resources"]["requests"] == c["resources"]["limits"]
    if not head:
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        assert group["groupName"]


def _resources(group: dict) -> dict:
    return json.loads(json.loads(group["rayStartParams"]["resources"]))  # KubeRay's quoted JSON


def _check_cluster_spec(spec: dict, want_groups: set[str]) -> dict:
    assert spec["rayVersion"] == RAY_VERSION
    _check_group(spec["headGroupSpec"], head=True)
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    assert set(groups) == want_groups
    for g in groups.values():
        _check_group(g, head=False)
        gpus = int(g["rayStartParams"]["num-gpus"])
        assert all(c["resources"]["limits"]["nvidia.com/gpu"] == str(gpus) for c in _containers(g))
    return groups


@pytest.mark.parametrize("path", ["cluster/kuberay-raycluster.yaml", "deploy/kuberay-rayjob.yaml"])
def test_kuberay_training_manifests(path):
    doc = load(path)
    assert doc["apiVersion"] == "ray.io/v1"
    spec = doc["spec"] if doc["kind"] == "RayCluster" else doc["spec"]["rayClusterSpec"]
    groups = _check_cluster_spec(spec, {"rollout-gpu", "learner-gpu"})
    assert _resources(groups["rollout-gpu"]) == {"rollout": int(groups["rollout-gpu"]["rayStartParams"]["num-gpus"])}
    assert _resources(groups["learner-gpu"]) == {"learner": int(groups["learner-gpu"]["rayStartParams"]["num-gpus"])}
    assert "reward" in _resources(spec["headGroupSpec"])
    if doc["kind"] == "RayJob":
        assert doc["spec"]["entrypoint"].startswith("python -m rl_service.cli train configs/")
        assert (REPO / doc["spec"]["entrypoint"].split()[4]).is_file(), "entrypoint names a config in the repo"
        assert yaml.safe_load(doc["spec"]["runtimeEnvYAML"])["env_vars"]["HF_HUB_OFFLINE"] == "1"
        assert doc["spec"]["shutdownAfterJobFinishes"] is True
    else:
        assert doc["kind"] == "RayCluster"


def test_kuberay_rayservice_and_serve_config():
    doc = load("deploy/kuberay-rayservice.yaml")
    assert (doc["apiVersion"], doc["kind"]) == ("ray.io/v1", "RayService")
    _check_cluster_spec(doc["spec"]["rayClusterConfig"], {"serve-gpu"})
    for serve_cfg in (yaml.safe_load(doc["spec"]["serveConfigV2"]), load("deploy/serve.yaml")):
        (app,) = serve_cfg["applications"]
        module, _, attr = app["import_path"].partition(":")
        assert (REPO / (module.replace(".", "/") + ".py")).is_file() and attr == "app_builder"
        assert "checkpoint" in app["args"]
        from rl_service.config import ServeConfig

        ServeConfig(**app["args"]["serve"])  # every serve arg is a real ServeConfig field


def test_runtime_env_file_is_valid():
    env = load("deploy/runtime_env.yaml")
    assert set(env) <= {"env_vars", "excludes", "working_dir", "pip", "py_modules", "config"}
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in env["env_vars"].items())
    for heavy in (".venv/", ".cache/", "runs/"):
        assert heavy in env["excludes"], f"{heavy} would be uploaded with every job"
