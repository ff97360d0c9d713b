"""Placement on a multi-node loopback cluster: head labelled `reward`, one node labelled
`rollout`, one `learner` (custom resources). Rollout workers, scorers and learners are made
by rl_service/infra/placement.py from config alone (resources.custom) and must land on the nodes
labelled for them; rollout.num_workers=2 (an override of the
config's 1) adds a worker with no code change. Learners
are gang scheduled in one placement group."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from rl_service.infra import local_cluster
from rl_service.infra.local_cluster import NodeSpec

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow

# Runs as a driver attached to the cluster: builds the actors exactly as training does
# (HF engine: cheap to construct), waits until every constructor ran, reports node per actor.
PROBE = r"""
import json, sys, ray
from ray.util.state import list_actors
from rl_service.infra import placement
from rl_service.config import load_config
from rl_service.models.build import ensure_model

cfg = load_config("configs/ci/tiny.yaml", sys.argv[3:])
model = str(ensure_model(cfg.model, cfg.task, cfg.seed, progress=False))
ray.init(address=sys.argv[1], logging_level="ERROR")
learners, pg = placement.make_learners(cfg, model)
workers, scorers = placement.make_rollout_workers(cfg, model), placement.make_scorers(cfg)
ray.get([a.__ray_ready__.remote() for a in workers + scorers + learners], timeout=240)
roles = ("rollout", "reward", "learner")
nodes = {n["NodeID"]: sorted(k for k in n["Resources"] if k in roles) for n in ray.nodes() if n["Alive"]}
actors = {a.name: a.node_id for a in list_actors(address=sys.argv[2], filters=[("state", "=", "ALIVE")]) if a.name}
pg_table = ray.util.placement_group_table(pg)
result = {"nodes": nodes, "actors": actors, "pg_state": pg_table["state"], "pg_strategy": pg_table["strategy"]}
print("RESULT " + json.dumps(result))
for a in workers + scorers + learners:
    ray.kill(a)
placement.release(pg)
"""


@pytest.fixture(scope="module")
def labelled_cluster():
    root = REPO / ".tmp" / "cluster" / f"place-{uuid.uuid4().hex[:6]}"
    nodes = [NodeSpec("rollout", 2, {"rollout": 2}), NodeSpec("learner", 2, {"learner": 2})]
    with local_cluster.running(root, head_cpus=1, head_resources={"reward": 1}, nodes=nodes) as st:
        yield st


def probe(st: dict, overrides: list[str]) -> dict:
    overrides = [
        "rollout.engine=hf",
        f"model.cache_dir={REPO / '.cache' / 'test-models'}",
        "rollout.resources.custom={rollout: 1}",
        "reward.resources.custom={reward: 1}",
        "learner.resources.custom={learner: 1}",
        *overrides,
    ]
    env = {**os.environ, "RAY_AUTH_MODE": "token"}
    env.pop("RAY_ADDRESS", None)
    r = subprocess.run(
        [sys.executable, "-c", PROBE, st["gcs_address"], st["dashboard_url"], *overrides],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    line = [ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")]
    assert r.returncode == 0 and line, r.stdout[-2000:] + r.stderr[-4000:]
    return json.loads(line[0][len("RESULT ") :])


def test_components_land_on_their_labelled_nodes(labelled_cluster):
    num_workers = 2  # tiny.yaml has 1: the second worker comes from the override alone
    res = probe(labelled_cluster, [f"rollout.num_workers={num_workers}"])
    node_of_label = {labels[0]: nid for nid, labels in res["nodes"].items() if labels}
    assert set(node_of_label) == {"rollout", "reward", "learner"} and len(set(node_of_label.values())) == 3
    actors = res["actors"]
    rollout = sorted(n for n in actors if n.startswith("rollout-"))
    assert rollout == [f"rollout-{i}" for i in range(num_workers)]  # 1 -> 2 from config alone
    assert all(actors[n] == node_of_label["rollout"] for n in rollout)
    assert actors["reward-0"] == node_of_label["reward"]
    assert actors["learner-0"] == actors["learner-1"] == node_of_label["learner"]
    assert (res["pg_state"], res["pg_strategy"]) == ("CREATED", "PACK")
