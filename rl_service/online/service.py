"""`rl-service online`: a served policy that keeps learning from the people who use it.

    users ──HTTP──▶ Serve endpoint (PolicyServer replicas) ──writes──▶ feedback store (SQLite/PostgreSQL)
                      ▲ load in place                                       │ read every online.poll_s
                      │                                                     ▼
                 VersionBoard ◀── publish / roll back ── OnlineService (this process, one round at a time)
                                                            │ every online.rm_every new preference pairs:
                                                            ├─ 1 refit the reward model on ALL pairs so far
                                                            │    (`train-rm`, warm start; adopted only if its
                                                            │    held-out accuracy is not worse)
                                                            ├─ 2 PPO round: `train` from the served version,
                                                            │    reward = adopted RM, prompts = users' prompts
                                                            ├─ 3 guards: KL, reward, held-out canary vs served
                                                            ├─ 4 publish; every replica swaps; live canary:
                                                            │    worse than checked -> roll back
                                                            └─ state.json after every step (online/state.py)

Backpressure: none reaches the users. Requests and feedback are answered by the replicas while
a round runs; feedback that arrives meanwhile waits in the store for the next refit (the
watermark only moves when a refit reads the pairs). Rounds never overlap: the next one starts
when the store has rm_every pairs beyond what the last refit read.

Operator requests (`rl-service online CONFIG --pin V | --unpin | --rollback [V]`) are lines of
`<run dir>/online/operator.jsonl`, applied within a second also while a round runs, and
recorded in state.json, so one made while the service is down is applied when it starts. A round
during which the served version changed (rolled back, pinned) is not published: its candidate
started from a version the operator no longer wants.

Crash and resume: everything the loop decided is in state.json and the directories it names;
feedback is in the store (acknowledged = committed). A restarted service serves
`state.serving`, redoes the round that was cut short from its start, and goes on.
"""

from __future__ import annotations

import json
import shutil
import threading
import traceback
from pathlib import Path

from rl_service.config.online import OnlineRunConfig
from rl_service.config.serve import secret
from rl_service.online import checks, operator, rounds
from rl_service.online.publish import prepare
from rl_service.online.state import OnlineState
from rl_service.online.tracking import OnlineMetrics


class OnlineService:
    def __init__(self, cfg: OnlineRunConfig, run_dir: Path, policy_dir: str, log=print):
        self.cfg, self.oc, self.run_dir, self.log = cfg, cfg.online, Path(run_dir), log
        self.dir = self.run_dir / "online"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.state_path = self.dir / "state.json"
        if self.state_path.is_file():
            self.state = OnlineState.load(self.state_path)
            self.resumed = True
        else:
            self.state = OnlineState()
            self.state.add_version(0, dir=str(Path(policy_dir).resolve()), status="serving", round=0)
            self.state.history.append(0)
            self.resumed = False
            self._save()
        self.follower = None
        self.store = None
        self._stop = threading.Event()
        self.metrics = OnlineMetrics(self.run_dir, cfg)
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # the checks load small models often: no bars in the log

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Deploy the endpoint serving `state.serving`; return once a replica answers."""
        from rl_service.serving.feedback import FeedbackStore
        from rl_service.serving.follow import ServeFollower

        sc = self.cfg.serve
        serving = self.state.serving
        self.follower = ServeFollower.start(sc, self.state.version(serving)["dir"])
        self.store = FeedbackStore(sc.feedback_db, secret(sc.feedback_dsn))
        if serving:  # the replica loaded the directory as version 0: publish it under its number
            self._publish(serving, rollback=True)
            self.follower.wait(serving, timeout_s=self.oc.swap_timeout_s, exact=True)
            if "canary_agreement" not in self.state.version(serving):  # swapped in, then a crash
                why = self._live_verdict(serving)
                if why is not None:
                    self.rollback(None, why)

    def stop(self) -> None:
        if self.follower is not None:
            self.follower.stop()
        if self.store is not None:
            self.store.close()
        self.metrics.close()

    @property
    def url(self) -> str:
        return f"http://{self.cfg.serve.host}:{self.cfg.serve.port}"

    def run(self, stop: threading.Event) -> None:
        """Until `stop` is set (SIGINT / SIGTERM: a running round's child is stopped within a
        second and the round is redone at the next start)."""
        self._stop = stop
        while not stop.is_set():
            try:
                self.apply_operator_requests()
                if self.state.pinned is None and self._due():
                    self.round()
            except rounds.RoundInterrupted:
                self.log("[online] stopped during a round: it is redone at the next start")
                return
            except Exception as err:  # noqa: BLE001 - the store, a swap, a request: log, keep serving
                self.log(f"[online] {type(err).__name__}: {err}; serving goes on\n{traceback.format_exc()}")
            stop.wait(self.oc.poll_s)

    def _between_polls(self) -> None:
        """While a round's child runs: operator requests, and the stop signal."""
        self.apply_operator_requests()
        if self._stop.is_set():
            raise rounds.RoundInterrupted()

    def _due(self) -> bool:
        return len(self.store.preference_pairs()) - self.state.watermark >= self.oc.rm_every

    def _save(self) -> None:
        self.state.save(self.state_path)

    # ------------------------------------------------------------------ one round

    def round(self) -> None:
        k = self.state.rounds + 1
        round_dir = self.dir / "rounds" / f"round-{k:04d}"
        if round_dir.exists():  # a round cut short by a crash: redone from its start
            shutil.rmtree(round_dir)
        round_dir.mkdir(parents=True)
        pairs = self.store.preference_pairs()
        row: dict = {"round": k, "online/feedback_pairs": len(pairs)}
        try:
            n_train, n_held = rounds.write_pairs(round_dir, pairs, self.cfg)
            if not n_train or not n_held:
                self.log(f"[online] round {k}: {n_train} train / {n_held} held-out pairs; waiting for more")
                shutil.rmtree(round_dir)
                return
            row.update(self._refit(round_dir, k))
            self._save()  # the adopted reward model; the feedback position moves when the round ends
            if self.state.rm.dir is not None:
                row.update(self._ppo(round_dir, k))
            self.state.watermark = len(pairs)
        except rounds.RoundInterrupted:
            raise
        except Exception as err:  # noqa: BLE001 - a round's failure never stops the serving
            detail = "" if isinstance(err, rounds.RoundFailed) else "\n" + traceback.format_exc()
            self.log(f"[online] round {k} failed: {type(err).__name__}: {err}{detail}")
            row["online/round_failed"] = 1
            self.state.watermark = len(pairs)  # retried after rm_every more pairs, not in a loop
        self.state.rounds = k
        self._save()
        self._log_metrics(row)

    def _refit(self, round_dir: Path, k: int) -> dict:
        rm = self.state.rm
        warm = rm.dir
        rounds.write_yaml(round_dir / "rm.yaml", {**rounds.rm_config(self.cfg, warm), "run_root": str(round_dir)})
        self.log(f"[online] round {k}: refitting the reward model ({'warm start' if warm else 'first fit'})")
        rounds.run_cli(
            ["train-rm", str(round_dir / "rm.yaml"), "--data", str(round_dir / "pairs_train.jsonl"),
             "--eval-data", str(round_dir / "pairs_held.jsonl")],
            round_dir / "rm.log", self.oc.round_timeout_s, while_waiting=self._between_polls,
        )  # fmt: skip
        s = json.loads((round_dir / "rm" / "summary.json").read_text())
        before, after = s["eval/accuracy_start"], s["eval/accuracy_end"]
        # warm start: accuracy_start IS the adopted model on these held-out pairs
        adopt = after > self.oc.min_accuracy if warm is None else after >= before
        rm.refits += 1
        if adopt:
            target = self.dir / "rm" / f"rm-{k:04d}"
            rounds.make_room(target)  # left by an attempt of this round that a crash cut short
            shutil.move(str(round_dir / "rm" / "model"), target)
            rm.dir, rm.accuracy, rm.adopted = str(target), after, rm.adopted + 1
        self.log(
            f"[online] round {k}: reward model held-out accuracy {after:.3f} "
            f"({'adopted' if adopt else 'not adopted'}; {'current ' + format(before, '.3f') if warm else 'first'})"
        )
        return {
            "online/rm_refit_accuracy": after,
            "online/rm_adopted": int(adopt),
            "online/rm_accuracy": rm.accuracy,
        }

    def _ppo(self, round_dir: Path, k: int) -> dict:
        st, oc = self.state, self.oc
        served = st.version(st.serving)["dir"]
        prompts = self.store.prompts()
        train_prompts, held = rounds.split_prompts(prompts, self.cfg.preference.eval_fraction, self.cfg.seed)
        train_prompts += rounds.task_prompts(self.cfg, served, oc.task_prompts)
        canary = held[: oc.canary_prompts]
        if len(train_prompts) < oc.min_prompts or not canary:
            self.log(f"[online] round {k}: {len(train_prompts)} prompts / {len(canary)} canary; no PPO yet")
            return {}
        rounds.write_prompts(round_dir / "prompts.jsonl", train_prompts)
        rounds.write_prompts(round_dir / "canary.jsonl", canary)
        data = rounds.ppo_config(
            self.cfg, served, st.rm.dir, round_dir / "prompts.jsonl", round_dir / "canary.jsonl", len(canary)
        )
        rounds.write_yaml(round_dir / "ppo.yaml", {**data, "run_root": str(round_dir)})
        self.log(f"[online] round {k}: PPO {oc.ppo_steps} steps from v{st.serving} on {len(train_prompts)} prompts")
        started_from = st.serving
        ppo_args = ["train", str(round_dir / "ppo.yaml")]
        rounds.run_cli(ppo_args, round_dir / "ppo.log", oc.round_timeout_s, self._ray_env(), self._between_polls)
        steps = rounds.read_rows(round_dir / "ppo" / "metrics.jsonl")
        shutil.rmtree(round_dir / "ppo" / "checkpoints", ignore_errors=True)  # final/ is what stays
        problems = checks.round_problems(steps, oc)
        if st.serving != started_from:  # the operator rolled back or pinned meanwhile
            problems.append(f"the served version changed during the round (v{started_from} -> v{st.serving})")
        elif st.pinned is not None:
            problems.append(f"v{st.pinned} was pinned during the round")
        n_tok = self.cfg.rollout.max_new_tokens
        cand_dir = round_dir / "ppo" / "final"
        served_score = checks.mean_score(st.rm.dir, canary, checks.greedy_answers(served, canary, n_tok))
        cand_answers = checks.greedy_answers(str(cand_dir), canary, n_tok)
        cand_score = checks.mean_score(st.rm.dir, canary, cand_answers)
        if cand_score < served_score - oc.canary_margin:
            problems.append(
                f"held-out canary score {cand_score:.3f} < served v{st.serving}'s {served_score:.3f} "
                f"- online.canary_margin={oc.canary_margin}"
            )
        v = st.next_version()
        target = self.dir / "versions" / f"v{v}"
        rounds.make_room(target)
        shutil.move(str(cand_dir), target)
        record = {
            "dir": str(target),
            "parent": st.serving,
            "round": k,
            "rm": st.rm.dir,
            "kl_max": max((r.get("kl/mean", 0.0) for r in steps), default=None),
            "reward_first": steps[0].get("reward/mean") if steps else None,
            "reward_last": steps[-1].get("reward/mean") if steps else None,
            "canary_checked": cand_score,
            "canary_served": served_score,
            "canary_answers": cand_answers,
            "problems": problems,
        }
        out = {
            "online/reward_mean": record["reward_last"],
            "online/kl_max": record["kl_max"],
            "online/canary_checked": cand_score,
        }
        if problems:
            st.add_version(v, status="refused", **record)
            self._save()
            self.log(f"[online] round {k}: v{v} refused: {'; '.join(problems)}")
            return {**out, "online/refused": 1}
        st.add_version(v, status="candidate", **record)
        self._save()
        return {**out, **self._go_live(v)}

    # ------------------------------------------------------------------ publish / roll back

    def _go_live(self, v: int) -> dict:
        """Publish `v`, wait for every replica, then check the live endpoint; roll back if worse."""
        st, oc = self.state, self.oc
        previous = st.serving
        try:
            self._publish(v)
            self.follower.wait(v, timeout_s=oc.swap_timeout_s, exact=True)
        except Exception as err:  # noqa: BLE001 - replicas refused or never loaded it
            st.version(v)["status"] = "failed"
            st.version(v)["problems"] = [f"publish: {type(err).__name__}: {err}"]
            self._publish(previous, rollback=True)
            self._save()
            self.log(f"[online] v{v} failed to load ({err}); v{previous} republished")
            return {"online/publish_failed": 1}
        st.set_serving(v)
        self._save()
        why = self._live_verdict(v)
        rec = st.version(v)
        out = {"online/canary_live": rec["canary_live"], "online/canary_agreement": rec["canary_agreement"]}
        if why is not None:
            self.rollback(previous, why)
            return {**out, "online/rolled_back": 1}
        self.log(
            f"[online] serving v{v} (canary {rec['canary_live']:.3f}, {rec['canary_agreement']:.0%} as checked; "
            f"v{previous} scored {rec['canary_served']:.3f})"
        )
        return out

    def _live_verdict(self, v: int) -> str | None:
        """Ask the endpoint (serving `v`) the canary; record the result; why it must go, or None."""
        oc, rec = self.oc, self.state.version(v)
        live, agree = self._live_check(v)
        rec["canary_live"], rec["canary_agreement"] = live, agree
        self._save()
        checked = rec["canary_checked"]
        if live is None:
            return "the endpoint failed its canary"
        if agree < oc.min_live_agreement:
            return (
                f"the endpoint answered {agree:.0%} of the canary as checked "
                f"< online.min_live_agreement={oc.min_live_agreement}"
            )
        if live < checked - oc.canary_margin:
            return f"live canary score {live:.3f} < checked {checked:.3f} - online.canary_margin={oc.canary_margin}"
        return None

    def _live_check(self, v: int) -> tuple[float | None, float]:
        """(mean reward-model score of the endpoint's canary answers, fraction equal to the
        checked candidate's); (None, 0) when a canary request fails or another version answers."""
        sc = self.cfg.serve
        canary = [
            json.loads(x)["prompt"] for x in self._round_dir_of(v).joinpath("canary.jsonl").read_text().splitlines()
        ]
        try:
            answers, version = checks.endpoint_answers(
                self.url, canary, self.cfg.rollout.max_new_tokens, secret(sc.api_key), sc.model_name, sc.max_prompts
            )
        except Exception as err:  # noqa: BLE001 - any failure of the canary is a failed check
            self.log(f"[online] v{v}: canary request failed: {type(err).__name__}: {err}")
            return None, 0.0
        if version != v:
            self.log(f"[online] v{v}: canary answered by v{version}")
            return None, 0.0
        rec = self.state.version(v)
        agree = sum(a == b for a, b in zip(answers, rec["canary_answers"])) / len(answers)
        return checks.mean_score(rec["rm"], canary, answers), agree

    def _round_dir_of(self, v: int) -> Path:
        return self.dir / "rounds" / f"round-{self.state.version(v)['round']:04d}"

    def _publish(self, v: int, rollback: bool = False) -> None:
        import ray

        record = self.state.version(v)
        probes = [json.loads(x)["prompt"] for x in self._probe_texts(v)]
        sd, meta = prepare(v, record["dir"], probes)
        self.follower.publish(v, ray.put(sd), meta, rollback=rollback)

    def _probe_texts(self, v: int) -> list[str]:
        path = self._round_dir_of(v) / "canary.jsonl" if v else None
        if path is not None and path.is_file():
            return path.read_text().splitlines()[:2]
        return [json.dumps({"prompt": p}) for p in (self.store.prompts()[:2] if self.store else [])]

    def rollback(self, to: int | None, why: str) -> str:
        st = self.state
        to = st.previous_good() if to is None else to
        if to is None or str(to) not in st.versions:
            return f"no version {to} to roll back to"
        bad = st.serving
        if to == bad:
            return f"v{to} is already served"
        self._publish(to, rollback=True)
        st.version(bad).setdefault("problems", []).append(f"rolled back: {why}")
        st.set_serving(to, previous_status="rolled_back")
        st.rollbacks += 1
        self._save()  # decided: the board holds `to`; replicas that are slow to load it still will
        try:
            self.follower.wait(to, timeout_s=self.oc.swap_timeout_s, exact=True)
        except TimeoutError as err:
            self.log(f"[online] rollback to v{to}: {err}")
        self._log_metrics({"online/rolled_back": 1})
        msg = f"rolled back v{bad} -> v{to}: {why}"
        self.log(f"[online] {msg}")
        return msg

    # ------------------------------------------------------------------ operator requests

    def apply_operator_requests(self) -> None:
        for req in operator.unapplied(self.dir, self.state.operator_done):
            try:
                result = operator.apply(self, req)
            except rounds.RoundInterrupted:
                raise
            except Exception as err:  # noqa: BLE001 - answered as failed, never replayed
                result = f"error: {type(err).__name__}: {err}"
            self.state.operator_results[req["id"]] = result
            self.state.operator_done += 1
            self._save()
            self.log(f"[online] operator {req['op']}: {result}")

    # ------------------------------------------------------------------ monitoring

    def _ray_env(self) -> dict[str, str]:
        import os

        import ray

        return {"RAY_ADDRESS": os.environ.get("RAY_ADDRESS") or ray.get_runtime_context().gcs_address}

    def _log_metrics(self, row: dict) -> None:
        self.metrics.log_state(self.state, self.store, row)
