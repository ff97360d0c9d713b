"""The chaos harness on plain processes: it finds a component by the name in its environment,
waits for a logged step, kills one process of the planned role (and nothing else), skips the
final step, and reports what outlived the run."""

import json
import os
import subprocess
import sys
import time

from rl_service.infra.env import ACTOR_ENV
from rl_service.testing.chaos import Chaos, last_step_logged, role_of

# A "driver" that starts two "actors" (named in their environment) and a bystander, then sleeps.
DRIVER = r"""
import os, subprocess, sys, time
env = lambda name: {**os.environ, "ACTOR_ENV": name} if name else dict(os.environ)
procs = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], env=env(n))
         for n in ("rollout-0", "rollout-1", "")]
print(" ".join(str(p.pid) for p in procs), flush=True)
time.sleep(120)
""".replace("ACTOR_ENV", ACTOR_ENV)


def test_last_step_logged_skips_a_torn_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    assert last_step_logged(path) == 0
    path.write_text(json.dumps({"step": 3}) + "\n" + json.dumps({"step": 4}) + "\n" + '{"step": 5, "x"')
    assert last_step_logged(path) == 4


def test_the_random_delay_is_paced_by_the_last_step(tmp_path):
    chaos = Chaos(os.getpid(), tmp_path / "metrics.jsonl", [], seed=1, last_step=10, max_delay_s=1.0)
    assert chaos.step_length(3) == 1.0  # nothing seen yet: the cap
    chaos.seen_at = {2: 10.0, 3: 10.3, 4: 15.0}
    assert abs(chaos.step_length(3) - 0.3) < 1e-9  # a 0.3 s step: the kill lands within the next 0.3 s
    assert chaos.step_length(4) == 1.0  # a long step (a recovery): capped


def test_kills_one_process_of_the_planned_role_after_a_logged_step(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    driver = subprocess.Popen([sys.executable, "-c", DRIVER], stdout=subprocess.PIPE, text=True)
    pids: list[int] = []
    try:
        pids = [int(p) for p in driver.stdout.readline().split()]
        chaos = Chaos(driver.pid, metrics, ["rollout", "rollout"], seed=7, last_step=10, max_delay_s=0.2).start()
        time.sleep(1.0)
        assert chaos.kills == []  # no step logged yet: nothing killed
        import psutil

        roles = {p: role_of(psutil.Process(p)) for p in pids}
        assert roles == {pids[0]: ("rollout", "rollout-0"), pids[1]: ("rollout", "rollout-1"), pids[2]: None}
        metrics.write_text(json.dumps({"step": 1}) + "\n")
        deadline = time.monotonic() + 10
        while not chaos.kills and time.monotonic() < deadline:
            time.sleep(0.05)
        (kill,) = chaos.kills
        assert kill.role == "rollout" and kill.pid in pids[:2] and kill.after_step == 1
        time.sleep(1.0)
        assert len(chaos.kills) == 1  # the second waits for the next step
        metrics.write_text(json.dumps({"step": 1}) + "\n" + json.dumps({"step": 9}) + "\n")  # the final step began
        time.sleep(1.0)
        assert len(chaos.kills) == 1, "nothing is killed once the final step started"
        chaos.stop()
        alive = [p for p in pids if p != kill.pid]
        assert all(psutil.pid_exists(p) for p in alive)
        driver.kill()
        driver.wait()
        left = chaos.leftovers(grace_s=0.5)  # the driver's children outlive it here: reported
        assert sorted(int(x.split()[0]) for x in left) == sorted(alive)
        chaos.reap()
        assert chaos.leftovers(grace_s=5) == []
    finally:
        driver.kill()
        for p in pids:
            try:
                os.kill(p, 9)
            except OSError:
                pass


def test_a_random_plan_kills_every_role_and_the_driver_last():
    import random

    from rl_service.testing.chaos_trial import random_plan

    plans = [random_plan(random.Random(seed), 10) for seed in range(20)]
    for plan in plans:
        assert len(plan) == 10 and plan[-1] == "driver" and "driver" not in plan[:-1]
        assert {"rollout", "reward", "queue", "learner"} <= set(plan)
    assert len({tuple(p) for p in plans}) > 10, "the seed draws the order"
    assert random_plan(random.Random(3), 10) == random_plan(random.Random(3), 10)
