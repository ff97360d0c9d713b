"""Pieces of the cluster tooling that need no Ray cluster: `down` stops exactly the processes
of its own temp dir (and their children) and nothing else; node specs; W&B run resumption;
the deploy configs against Ray's own schemas."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from rl_service.infra import local_cluster
from rl_service.infra.local_cluster import NodeSpec, parse_node

REPO = Path(__file__).resolve().parents[2]


def test_down_stops_own_processes_and_children_only(tmp_path):
    ours_dir, other_dir = tmp_path / "ours" / "ray", tmp_path / "other" / "ray"
    # Stand-ins for Ray daemons: the temp dir is in the parent's command line, not the child's.
    ours = subprocess.Popen(["bash", "-c", f"sleep 300 & wait # {ours_dir}"])
    other = subprocess.Popen(["bash", "-c", f"sleep 300 & wait # {other_dir}"])
    try:
        time.sleep(0.5)
        (tmp_path / "ours").mkdir()
        (tmp_path / "ours" / "cluster.json").write_text(json.dumps({"ray_temp_dir": str(ours_dir), "pids": [ours.pid]}))
        found = local_cluster.our_pids(str(ours_dir))
        assert ours.pid in found and len(found) == 2  # bash + its sleep child
        stopped = local_cluster.down(tmp_path / "ours", grace_s=2)
        assert set(stopped) == set(found)
        ours.wait(timeout=5)
        assert not any(local_cluster.pid_alive(p) for p in found)
        assert other.poll() is None and len(local_cluster.our_pids(str(other_dir))) == 2
        assert local_cluster.read_state(tmp_path / "ours") is None
    finally:
        for p in local_cluster.our_pids(str(other_dir)):
            subprocess.run(["kill", str(p)])
        other.wait(timeout=5)


def test_parse_node():
    assert parse_node("rollout:2:rollout=2") == NodeSpec("rollout", 2, {"rollout": 2})
    assert parse_node("train:2:learner=2,reward=1").resources == {"learner": 2, "reward": 1}
    assert parse_node("plain:1") == NodeSpec("plain", 1, {})
    for bad in ("", "rollout", "rollout:x", "rollout:2:rollout=abc"):
        with pytest.raises(ValueError):
            parse_node(bad)


def test_wandb_run_id_is_kept_so_a_resumed_run_continues(tmp_path, monkeypatch):
    from rl_service.config import load_config
    from rl_service.tracking.run import RunTracker

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_DIR", raising=False)
    cfg = load_config(REPO / "configs/ci/tiny.yaml", ["tracking.wandb=true"])
    ids = []
    for step in (1, 2):  # second tracker = the run resumed in the same directory
        t = RunTracker(tmp_path, 2, start_step=step - 1, cfg=cfg)
        assert t.wandb.settings.mode == "offline"
        ids.append(t.wandb.id)
        t.log({"step": step, "reward/mean": 0.5})
        t.close()
        time.sleep(1.1)  # W&B names offline run dirs by the second: keep the two sessions apart
    assert ids[0] == ids[1] == (tmp_path / "wandb_run_id").read_text().strip()
    assert len(list((tmp_path / "wandb").glob(f"offline-run-*-{ids[0]}"))) == 2  # both sessions, one run id
    fixed = load_config(REPO / "configs/ci/tiny.yaml", ["tracking.wandb=true", "tracking.wandb_run_id=abc123"])
    (tmp_path / "fixed").mkdir()
    t = RunTracker(tmp_path / "fixed", 1, cfg=fixed)
    assert t.wandb.id == "abc123"
    t.close()


def test_deploy_configs_pass_rays_own_schemas():
    from ray.runtime_env import RuntimeEnv
    from ray.serve.schema import ServeDeploySchema

    RuntimeEnv(**yaml.safe_load((REPO / "deploy/runtime_env.yaml").read_text()))
    ServeDeploySchema.model_validate(yaml.safe_load((REPO / "deploy/serve.yaml").read_text()))
    svc = yaml.safe_load((REPO / "deploy/kuberay-rayservice.yaml").read_text())
    ServeDeploySchema.model_validate(yaml.safe_load(svc["spec"]["serveConfigV2"]))
    job = yaml.safe_load((REPO / "deploy/kuberay-rayjob.yaml").read_text())
    env = yaml.safe_load(job["spec"]["runtimeEnvYAML"])
    assert env.pop("working_dir") == "/app"  # exists in the image, not here
    RuntimeEnv(**env)
