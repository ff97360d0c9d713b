"""$RL_SERVICE_FAULT parsing and once-only firing across (simulated) restarts."""

import pytest

from rl_service.controller.recovery import FaultLog
from rl_service.testing import faults


def test_fires_once_then_never_again_even_for_a_fresh_process(tmp_path, monkeypatch):
    monkeypatch.setenv(faults.FAULT_ENV, "kill_rollout:3, kill_queue:7")
    monkeypatch.setenv(faults.MARKER_ENV, str(tmp_path))
    assert not faults.fire("kill_rollout", 2)
    assert faults.fire("kill_rollout", 3)
    assert not faults.fire("kill_rollout", 3)  # the marker file survives a restarted actor
    assert faults.fire("kill_queue", 7)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kill_queue:7#0", "kill_rollout:3#0"]


def test_times_suffix_fires_n_times(tmp_path, monkeypatch):
    monkeypatch.setenv(faults.FAULT_ENV, "kill_scorer:1x2")
    monkeypatch.setenv(faults.MARKER_ENV, str(tmp_path))
    assert [faults.fire("kill_scorer", 1) for _ in range(4)] == [True, True, False, False]


def test_no_plan_fires_nothing(tmp_path, monkeypatch):
    monkeypatch.delenv(faults.FAULT_ENV, raising=False)
    monkeypatch.setenv(faults.MARKER_ENV, str(tmp_path))
    assert not faults.fire("kill_rollout", 0)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("bad", ["kill_rollout", "kill_rollout:x", "kill rollout:1", "kill_rollout:1x"])
def test_malformed_entry_is_named(bad, monkeypatch):
    monkeypatch.setenv(faults.FAULT_ENV, bad)
    with pytest.raises(ValueError, match="RL_SERVICE_FAULT"):
        faults.fire("kill_rollout", 1)


def test_fault_log_counts_and_recover_time():
    log = FaultLog()
    log.add("faults/restarts_rollout")
    log.event(kind="rollout", recover_s=2.5)
    log.event(kind="queue", recover_s=0.5)
    s = log.summary()
    assert s["faults/restarts_rollout"] == 1 and s["faults/recover_s"] == 3.0
    assert [e["kind"] for e in s["faults/events"]] == ["rollout", "queue"]


class _Queue:
    kills = 0

    def kill(self):
        self.kills += 1


def test_point_does_the_planned_fault_to_its_target_once(tmp_path, monkeypatch):
    monkeypatch.setenv(faults.FAULT_ENV, "kill_queue:7")
    monkeypatch.setenv(faults.MARKER_ENV, str(tmp_path))
    q = _Queue()
    for batch_id in (6, 7, 7):
        faults.point("kill_queue", batch_id, queue=q)
    assert q.kills == 1


def test_unknown_fault_point_is_an_error(monkeypatch):
    monkeypatch.delenv(faults.FAULT_ENV, raising=False)
    with pytest.raises(KeyError):
        faults.point("kill_everything", 1)
    with pytest.raises(ValueError, match="during work"):
        with faults.during("kill_queue", 1):
            pass


def test_during_without_a_plan_runs_the_block(monkeypatch):
    monkeypatch.delenv(faults.FAULT_ENV, raising=False)
    with faults.during("kill_rollout", 3):
        ran = True
    assert ran


def test_arm_keeps_markers_with_the_run_only_when_a_plan_is_set(tmp_path, monkeypatch):
    monkeypatch.delenv(faults.MARKER_ENV, raising=False)
    monkeypatch.delenv(faults.FAULT_ENV, raising=False)
    faults.arm(tmp_path)
    assert faults.actor_env() == {}
    monkeypatch.setenv(faults.FAULT_ENV, "kill_scorer:1")
    faults.arm(tmp_path)
    assert faults.actor_env() == {faults.FAULT_ENV: "kill_scorer:1", faults.MARKER_ENV: str(tmp_path / "faults")}
