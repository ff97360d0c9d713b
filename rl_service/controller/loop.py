"""The controller: wires the components and runs the training loop.

    PromptStream ─ PromptBatch ─▶ [prompt_q] ─▶ RolloutWorker × N  (vLLM engine, n samples/prompt,
         ▲                                          │               tagged sample_id + policy_version)
         │ refill: issue ≤ (1 + max_policy_lag)     ▼
         │ steps of prompts ahead         [rollout_q] ─▶ RewardScorer × M  (verifier / user fn)
         │                                                  │
    collect ◀──── (ScoredBatch ref, BatchSummary) ───── [scored_q]
         │  drop stale (version < current - lag), ledger by sample id
         ▼
    train: Learner × K (FSDP2) ── sync: publish(version+1) ──▶ load_weights on every worker
         │                          (state dict via object store, or streamed per tensor over a
         │                           weight-sync group: rollout.weight_sync; checksum + probe verified)
         ▼
    evaluate (every train.eval_every) ── checkpoint (every train.checkpoint_every, and at a halt)

One step is `Controller.step`: collect → train → sync (+ refill) → evaluate → checkpoint, each a
method below saying what it consumes, waits for and unblocks. The state they share is one
RunState (state.py); timings and the metrics row come from step_metrics.py.

Every queue is bounded (backpressure) and carries refs to whole batches. With lag 0 the
workers only ever see prompts issued after the last sync (strictly on-policy); with lag k
they generate up to k versions ahead while the learner trains.

Checkpoints (checkpoint.py) are taken at step boundaries, after the next step's prompts were
issued: they hold the learner state and everything the driver owns (data position, next batch
id, policy version, the ledger and the PromptBatches still in flight). A resumed run reloads the
learners, syncs the restored policy to the workers and re-puts the in-flight batches under their
original batch ids, so with lag 0 it samples and trains exactly what the uninterrupted run would
have (batches are trained in batch-id order). Guards halt the run with a checkpoint:
train.max_nan_steps skipped steps in a row, or a minibatch KL above learner.kl_hard_limit.

`placement: colocated` (one node, lag 0) runs this same step: the rollout workers and the learner
ranks are the same processes (infra/components.py), taking turns, and the sync's state dict stays
in them (each rank's engine loads its own gathered copy, verified the same way).

Crashes (recovery.py, docs/reliability.md): a dead rollout worker, reward scorer or queue is
replaced in place and every pending batch is put again; a dead learner process ends the attempt,
which restarts from the last checkpoint in the same call, up to train.max_restarts times.
"""

from __future__ import annotations

import time
from pathlib import Path

from rl_service.config import Config
from rl_service.controller import checkpoint
from rl_service.controller.evaluate import evaluate, prepare_text_eval, probe_sequences
from rl_service.controller.ledger import SampleLedger
from rl_service.controller.pipeline import BatchPipeline, batch_from_json
from rl_service.controller.recovery import FaultLog, Recovery, restart_learners
from rl_service.controller.state import RunState, load_resumable
from rl_service.controller.step_metrics import StepTimer, SyncResult, step_metrics
from rl_service.infra.components import Components, LearnerFailure
from rl_service.rollout import adapters
from rl_service.tasks import PromptStream, prepare_task
from rl_service.testing import faults
from rl_service.tracking.run import ConsumedLog, RunTracker, truncate_logs


class TrainingHalted(RuntimeError):
    """A health guard stopped the run; a checkpoint of the state at the halt was written."""


def train(
    cfg: Config, run_dir: Path, model_path: str, resume_from: Path | None = None, task=None, text_eval=None
) -> dict:
    """Run PPO updates up to `cfg.train.steps`; returns the summary (also written to summary.json).

    resume_from: a complete checkpoint dir; the run continues from its step exactly.
    task: the task already made (tasks.prepare_task), or None to make it here.
    text_eval: what eval.metrics need (controller.evaluate.prepare_text_eval), or None to prepare
    it here; prepared once, for every attempt.
    A learner failure restarts the run from its latest checkpoint (or from the start if it has
    none yet), at most train.max_restarts times; the summary counts the restarts."""
    faults.arm(run_dir)
    cfg = adapters.resolve(cfg, model_path)  # model.lora.sync settled: what learner and engines exchange
    flog = FaultLog()
    task = task if task is not None else prepare_task(cfg.task, model_path, cfg.rollout.max_new_tokens)
    text_eval = text_eval if text_eval is not None else prepare_text_eval(cfg, task, model_path)
    return restart_learners(
        lambda ckpt: Controller(cfg, run_dir, model_path, flog, task, text_eval).run(ckpt),
        resume_from,
        run_dir / "checkpoints",
        flog,
        cfg.train.max_restarts,
    )


class Controller:
    """One attempt of a run: start the components, run the steps, finish, tear down."""

    def __init__(self, cfg: Config, run_dir: Path, model_path: str, flog: FaultLog, task, text_eval=None):
        self.cfg, self.run_dir, self.model_path, self.flog = cfg, run_dir, model_path, flog
        self.task, self.text_eval = task, text_eval  # made once by train(), shared by every attempt
        self.comps: Components | None = None
        self.follower = self.tracker = self.consumed = None
        self.state: RunState  # set by _start, like the recovery and the probe sequences
        self.recovery: Recovery
        self.probes: list[list[int]]

    def run(self, resume_from: Path | None) -> dict:
        saved = load_resumable(resume_from, self.cfg)  # a mismatched config fails before any actor starts
        self.comps = Components.start(self.cfg, self.model_path)
        learner_failed = False
        try:
            self._start(resume_from, saved)
            while self.state.step < self.cfg.train.steps:
                self.step()
            return self._finish()
        except LearnerFailure:
            learner_failed = True
            raise
        finally:
            self._close(graceful=not learner_failed)

    # ------------------------------------------------------------------ the loop
    def step(self) -> None:
        """One step: the loop of the module diagram."""
        st, tc, timer = self.state, self.cfg.train, StepTimer()
        self.flog.step = st.step + 1
        with timer("wait"):
            refs, summaries = self.collect()
        if self.comps.streamer is not None:
            with timer("settle"):
                self.settle_weights()
        with timer("train"):
            learner = self.train(refs, summaries)
        halt = halt_reason(self.cfg, learner)
        sync = SyncResult()
        with timer("weight_sync"):
            if halt is None:
                sync = self.sync(timer)
                self.refill()
        evaluated = halt is None and _every(tc.eval_every, st.step) and st.step < tc.steps
        evaluation = self.evaluate() if evaluated else None
        timer.stop()  # timing_s/step ends here; a checkpoint is timed on its own
        metrics = step_metrics(
            step=st.step,
            version=st.version,
            learner=learner,
            summaries=summaries,
            timer=timer,
            sync=sync,
            evaluation=evaluation,
            num_workers=self.cfg.rollout.num_workers,
            num_scorers=self.cfg.reward.num_scorers,
            gauges={**self.comps.queue_depths(), **st.ledger.counts(), **self.flog.counts},
        )
        if halt is not None or _every(tc.checkpoint_every, st.step):
            with timer("checkpoint"):
                path = self.checkpoint()
            metrics["timing_s/checkpoint"] = timer.seconds["checkpoint"]
        self.tracker.log(metrics)
        if halt is not None:
            self._halt(halt, path)

    def collect(self) -> tuple[list, list]:
        """One step's scored batches: (ScoredBatch refs, BatchSummaries) in batch-id order.

        Consumes the scored queue. Waits for the scorers (train.timeout_s at most), and so for
        the rollout workers behind them; a batch more than max_policy_lag versions old is dropped
        and replaced. Unblocks scorers blocked on a full scored queue. A crashed worker, scorer
        or queue is replaced on the way (recovery.py) and the step's batches come anyway."""
        collected = self.state.pipe.collect(self.state.version)
        return [ref for ref, _ in collected], [s for _, s in collected]

    def train(self, refs: list, summaries: list) -> dict:
        """The PPO update on the step's batches; the step and policy version advance by one.

        Consumes the batch refs (every learner rank resolves them itself). Waits for every rank's
        update; a dead rank raises LearnerFailure (the attempt restarts from a checkpoint).
        Unblocks nothing upstream: with lag > 0 the workers keep generating meanwhile, with lag 0
        they idle until the sync. Books the batches as trained (ledger, consumed.jsonl)."""
        st = self.state
        faults.point("kill_learner", st.step + 1, learner=self.comps.learners[-1])
        learner = self.comps.train_step(refs, self.cfg.rollout.samples_per_prompt)
        st.pipe.mark_trained(summaries)
        self.consumed.log(st.step + 1, [s.batch_id for s in summaries], [p for s in summaries for p in s.prompt_ids])
        st.step, st.version = st.step + 1, st.version + 1
        return learner

    def sync(self, timer: StepTimer) -> SyncResult:
        """Weight sync: publish the new version, load it, verified, into every rollout worker.

        Consumes the learners' weights (an object-store state dict owned by this driver, or
        streamed to the workers: rollout.weight_sync=collective). Waits for every worker's
        checksum + load + probe check (streamed with max_policy_lag >= 1: only for the learners'
        send; the swap is settled before the next train step, settle_weights). Unblocks
        generation with the new policy (and a following Serve deployment's hot swap). A worker
        that dies loading is replaced and loads it when it starts."""
        st = self.state
        with timer("publish"):
            self.comps.publish(st.version, self.probes)
        loaded = self.recovery.retrying(st.pipe, self.comps.load_published)
        if self.follower:
            self.follower.on_version(st.version, *self.comps.published)  # (state_ref, meta) of this version
        return SyncResult(
            probe_max_diff=loaded["probe_max_diff"], load_s=loaded["load_s"], bytes=loaded.get("bytes", float("nan"))
        )

    def settle_weights(self) -> None:
        """rollout.weight_sync=collective with max_policy_lag >= 1: the last sync's swap was left
        in flight (workers verify + swap between two batches while the driver collects); wait for
        it before the learner changes its weights (a failed stream is re-sent from them, so they
        must still be the published version) and before an evaluation. Consumes nothing; waits
        for every worker's checksum + load + probe check; a worker that died is replaced."""
        self.recovery.retrying(self.state.pipe, self.comps.settle_weights)

    def refill(self) -> None:
        """Keep the pipeline 1 + max_policy_lag steps full: issue the prompts of step
        step + 1 + lag (none past the last step).

        Consumes the prompt stream. Waits for room in the prompt queue (a put blocks while it is
        full: backpressure from the rollout workers). Unblocks the rollout workers."""
        st, tc = self.state, self.cfg.train
        if st.step + tc.max_policy_lag < tc.steps:
            st.pipe.issue(st.pipe.batches_per_step)

    def evaluate(self) -> dict[str, float]:
        """Held-out metrics of the policy just synced (`eval/accuracy`, and a dataset task's reward
        mean and pass@k). Waits for every rollout worker's pass over its share of the eval set
        (generation of training batches waits with it)."""
        self.settle_weights()
        evaluation = evaluate(self.comps.workers, self.task, self.cfg, self.text_eval)
        self.state.accuracy = evaluation["eval/accuracy"]
        return evaluation

    def checkpoint(self) -> Path:
        """Checkpoint this step boundary: learner shards, then the driver's state, committed.

        Waits for every learner rank to write its shards. Unblocks nothing: the workers keep
        generating the prompts already issued (they are saved as pending)."""
        st, root = self.state, self.run_dir / "checkpoints"
        tmp = checkpoint.begin(root, st.step)
        learner_info = self.comps.save_checkpoint(tmp)
        faults.point("kill_in_checkpoint", st.step)
        path = checkpoint.commit(
            root, tmp, st.step, st.controller_state(learner_info, self.cfg), self.cfg.train.keep_last
        )
        st.last_saved = st.step
        return path

    # ------------------------------------------------------------------ before and after the loop
    def _start(self, resume_from: Path | None, saved: dict | None) -> None:
        """Run state from the checkpoint (or fresh), weights synced, loops running, the pipeline full."""
        cfg, comps = self.cfg, self.comps
        if cfg.serve.enabled:  # the OpenAI endpoint follows training by in-place hot swap
            from rl_service.serving.follow import ServeFollower

            self.follower = ServeFollower.start(cfg.serve, self.model_path)
        self.probes = probe_sequences(self.model_path, self.task)
        self.recovery = Recovery(comps, self.flog, cfg.train.max_restarts)
        stream, ledger = PromptStream(self.task, cfg.seed), SampleLedger(cfg.rollout.samples_per_prompt)
        st = self.state = RunState(BatchPipeline(cfg, comps, stream, ledger, self.flog, self.recovery))
        if saved:  # exact resume: learners, driver state, then the workers get the checkpoint's policy
            comps.load_checkpoint(resume_from)
            st.restore(saved)
            comps.publish(st.version, self.probes)
            self.recovery.retrying(st.pipe, comps.load_published)
        else:
            st.eval_start = self.evaluate()
            st.accuracy_start = st.eval_start["eval/accuracy"]
        # rows of steps after the checkpoint are redone; a line the crash cut short is dropped
        self.flog.add("faults/torn_log_lines", truncate_logs(self.run_dir, st.step))
        comps.start_loops()
        self.tracker = RunTracker(self.run_dir, cfg.train.steps, start_step=st.step, accuracy=st.accuracy, cfg=cfg)
        self.consumed = ConsumedLog(self.run_dir)
        if saved:  # the batches in flight at the checkpoint, under their original ids
            for d in saved["pending"]:
                st.pipe.put(batch_from_json(d))
        else:
            st.pipe.issue(st.pipe.batches_per_step * min(1 + cfg.train.max_policy_lag, cfg.train.steps))
        self.flog.learner_back(st.step)

    def _finish(self) -> dict:
        """Stop the loops, checkpoint the last step, evaluate, save the final model, summarise."""
        st, tc = self.state, self.cfg.train
        self.comps.stop_loops()
        if st.last_saved != tc.steps:
            self.checkpoint()
        self.settle_weights()
        end = evaluate(self.comps.workers, self.task, self.cfg, self.text_eval)
        acc_end = end["eval/accuracy"]
        self.comps.save_final(self.run_dir / "final")
        summary = {
            "steps": tc.steps,
            "wall_s": time.perf_counter() - self.flog.t0,
            "policy_version": st.version,
            "resumed_from_step": st.resumed_from,
            "eval/accuracy_start": st.accuracy_start,
            "eval/accuracy_end": acc_end,
            "eval/accuracy_gain": acc_end - st.accuracy_start,
            "model_path": str(self.model_path),
            "final_dir": str(self.run_dir / "final"),
            **st.ledger.check(),
            **self.flog.summary(),
            "faults/restarted_from_steps": self.flog.restarted_from,
            **{f"{k}_start": v for k, v in st.eval_start.items() if k != "eval/accuracy"},
            **{f"{k}_end": v for k, v in end.items() if k != "eval/accuracy"},
            **(self.task.summary() if hasattr(self.task, "summary") else {}),
        }
        self.tracker.write_summary(summary)
        return summary

    def _halt(self, reason: str, path: Path) -> None:
        st = self.state
        self.tracker.write_summary(
            {"steps": st.step, "halted": reason, "checkpoint": str(path), **st.ledger.counts(), **self.flog.summary()}
        )
        raise TrainingHalted(f"{reason}; state at step {st.step} saved in {path}")

    def _close(self, graceful: bool) -> None:
        for closable in (self.consumed, self.tracker):
            if closable is not None:
                closable.close()
        if self.follower:
            self.follower.stop()
        self.comps.shutdown(graceful=graceful)


def _every(n: int, step: int) -> bool:
    """A cadence of every n steps (0: never) is due at `step`."""
    return bool(n) and step % n == 0


def halt_reason(cfg: Config, metrics: dict) -> str | None:
    """Why the run must halt after this step (a health guard tripped), or None."""
    streak = metrics.get("train/nan_streak", 0)
    if streak >= cfg.train.max_nan_steps:
        return (
            f"{int(streak)} optimizer steps in a row skipped for a NaN/inf loss or gradient "
            f"(train.max_nan_steps={cfg.train.max_nan_steps})"
        )
    if metrics.get("policy/kl_hard_limit_hit", 0) > 0:
        return (
            f"KL to the sampling policy reached {metrics.get('policy/approx_kl_max', float('nan')):.3g}, above "
            f"learner.kl_hard_limit={cfg.learner.kl_hard_limit}: the policy blew up (lower learner.lr?)"
        )
    return None
