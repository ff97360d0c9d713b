"""The PPO learner: one instance per process, FSDP2-sharded policy, reference and critic.

A plain class (no Ray): placement.py wraps it with ray.remote; tests run it under
torch.multiprocessing. Every public method except __init__ is collective: the controller
calls it on every rank with the same arguments.

    learner = Learner(cfg, model_path, rank, world_size, addr, port, seed)
    learner.setup()
    metrics = learner.train_step(batches, group_size)
    version, state_dict = learner.publish(v, probe_ids)   # state_dict on rank 0 only
    outcome, state_dict = learner.publish_stream(v, probe_ids, spec)  # or streamed (weight_stream.py)
    learner.save_checkpoint(dir); learner.load_checkpoint(dir)  # exact resume (rl_service/controller/checkpoint.py)
"""

from __future__ import annotations

import copy
import math
import os
import time
import warnings
from pathlib import Path

import torch
from torch import Tensor

from rl_service.algo.kl import make_kl_controller
from rl_service.algo.masking import masked_mean, right_pad
from rl_service.algo.segments import prompt_groups
from rl_service.config import LearnerConfig, LoraConfig
from rl_service.learner import export, fsdp, learner_checkpoint, lora
from rl_service.learner.attention import use_segment_attention
from rl_service.learner.batching import batch_token_rewards, engine_logprobs, group_runs, pad_samples
from rl_service.learner.critic import load_value_model
from rl_service.learner.forward import Models, check_packed_attention, policy_logprobs
from rl_service.learner.prepare import RolloutTensors, prepare_rollout
from rl_service.learner.trpo_update import trpo_update
from rl_service.learner.update import ppo_update
from rl_service.rollout import weight_stream
from rl_service.rollout.weight_sync import state_dict_bytes, state_dict_checksum
from rl_service.types import PolicyVersion, Sample, ScoredBatch


class Learner:
    def __init__(
        self,
        cfg: LearnerConfig,
        model_path: str,
        rank: int,
        world_size: int,
        master_addr: str,
        master_port: int,
        seed: int,
        lora: LoraConfig | None = None,
    ):
        """Cheap: stores arguments, no collectives, no model loading. `lora`: model.lora (r 0 = off)."""
        self.cfg = cfg
        self.lora = lora if lora is not None and lora.r > 0 else None
        self.lora_layers: dict[str, bool] = {}
        """The policy's adapted layers (name -> fan_in_fan_out) when LoRA is on."""
        self.model_path = model_path
        self.rank, self.world_size = rank, world_size
        self.master_addr, self.master_port = master_addr, master_port
        self.seed = seed
        self.step = 0
        self.nan_streak = 0
        """Optimizer steps skipped in a row for a non-finite loss / grad norm (across train steps)."""
        self.kl_ctl = make_kl_controller(cfg.kl.coef, cfg.kl.target, cfg.kl.horizon)
        self.models: Models | None = None
        self.policy_opt: torch.optim.Optimizer | None = None
        self.critic_opt: torch.optim.Optimizer | None = None
        self.pad_id = 0
        self._sync_group: weight_stream.SyncGroup | None = None
        """Rank 0's end of the weight-sync group (rollout.weight_sync=collective)."""
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1") or 1))

    # ------------------------------------------------------------ setup

    def setup(self) -> dict:
        """Join the process group, load and shard policy / reference / critic, build optimizers."""
        from transformers import AutoModelForCausalLM

        # FSDP2 warns that the critic's output is a view (in-place ops on it would skip a hook);
        # the learner never modifies model outputs in place.
        warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")
        backend = fsdp.resolve_backend(self.cfg.backend)
        device, mesh = fsdp.init_distributed(backend, self.rank, self.world_size, self.master_addr, self.master_port)
        torch.manual_seed(self.seed)
        policy = AutoModelForCausalLM.from_pretrained(self.model_path, dtype=torch.float32)
        self.pad_id = _pad_id(policy.config)
        if self.lora:  # adapters only are trained; the base weights stay frozen
            self._peft_cfg = lora.peft_config(self.lora, policy, base_path=str(self.model_path))
            self.lora_layers = lora.add_adapters(policy, self._peft_cfg)
            self._adapter_config = lora.config_json(self._peft_cfg)  # what an adapter version names
        # Reference = the initial policy, frozen. Dropout stays off everywhere (eval mode):
        # with dropout the recomputed "old" logprobs would not be the sampling policy's.
        # Not built when the KL is neither penalised nor measured (kl.measure_every 0). With
        # LoRA it is the policy itself with its adapters off (made after sharding, below).
        reference = None
        wants_reference = self.cfg.kl.penalised or self.cfg.kl.measure_every > 0
        if wants_reference and not self.lora:
            reference = copy.deepcopy(policy).requires_grad_(False)
        critic = None
        if self.cfg.advantage.uses_critic:  # same backbone weights, a new zero value head
            critic = load_value_model(self.model_path, torch.float32)
            if self.lora:  # its own adapters, and the head
                lora.add_adapters(critic.backbone, lora.peft_config(self.lora, critic.backbone))
                critic.score.requires_grad_(True)
        packed = self.cfg.max_tokens_per_microbatch is not None
        if packed:  # attention per packed sample, not one [L, L] masked attention per row
            for m in (policy, reference, critic.backbone if critic is not None else None):
                if m is not None:
                    use_segment_attention(m)
        num_params = sum(p.numel() for p in policy.parameters())
        trainable = sum(p.numel() for p in policy.parameters() if p.requires_grad)
        for m in (policy, reference, critic):
            if m is not None:
                m.to(device).eval()
                # TRPO differentiates gradients of the policy: left unsharded (one process)
                if not (m is policy and self.cfg.optimizer == "trpo"):
                    fsdp.shard(m, mesh)
        if wants_reference and self.lora:
            reference = lora.AdaptersOff(policy)
        self.models = Models(
            policy,
            reference,
            critic,
            device,
            self.rank,
            self.world_size,
            packed=packed,
            adapter_dropout=bool(self.lora and self.lora.dropout > 0),
        )
        self.policy_opt = torch.optim.AdamW(_trainable(policy), lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)
        if critic is not None:
            self.critic_opt = torch.optim.AdamW(
                _trainable(critic), lr=self.cfg.advantage.critic_lr, weight_decay=self.cfg.weight_decay
            )
        # Linear warmup of the policy LR over the first PPO updates: Adam's first steps move
        # every weight by ~lr regardless of its gradient, which can wreck a small warm-started policy.
        warmup = max(1, self.cfg.lr_warmup_steps)
        self.policy_sched = torch.optim.lr_scheduler.LambdaLR(self.policy_opt, lambda s: min(1.0, (s + 1) / warmup))
        if packed:
            # After the optimizers: a no-grad forward leaves the FSDP2 root's parameters unsharded
            # (they are resharded in backward), so an optimizer built after it held plain tensors
            # the model then dropped, and embeddings / final norm / lm_head never moved (measured).
            check_packed_attention(policy, device, shared=self.cfg.share_prompt)
        return {
            "num_params": num_params,
            "trainable_params": trainable,
            "lora_layers": len(self.lora_layers),
            "backend": backend,
            "device": str(device),
            "critic": critic is not None,
            "reference": reference is not None,
        }

    # ------------------------------------------------------------ train

    def train_step(self, batches: list[ScoredBatch], group_size: int) -> dict[str, float]:
        """One PPO update on all samples of `batches` (same list on every rank).

        Returns metrics averaged over ranks (identical dict on every rank).
        """
        assert self.models is not None, "call setup() first"
        t0 = time.perf_counter()
        samples: list[Sample] = [s for b in batches for s in b.samples]
        rewards = [r for b in batches for r in b.rewards]
        if not samples:
            raise ValueError("train_step got no samples")
        if len(rewards) != len(samples):
            raise ValueError(f"{len(samples)} samples but {len(rewards)} rewards")
        device = self.models.device
        batch = {k: v.to(device) for k, v in pad_samples(samples, self.pad_id).items()}
        scores = torch.tensor(rewards, dtype=torch.float32, device=device)
        kl_coef = float(self.kl_ctl.value)
        token_rewards = batch_token_rewards(batches, batch["input_ids"].shape[1])  # distillation; else None
        from_engine = self.cfg.behavior_logprobs == "rollout"
        recompute = not from_engine or _due(self.cfg.logprob_check_every, self.step)
        measure_kl = self.cfg.kl.penalised or _due(self.cfg.kl.measure_every, self.step)
        engine_lp = engine_logprobs(samples, batch["input_ids"].shape[1]).to(device)  # [N, T-1]
        groups, refused = None, 0
        if self.cfg.share_prompt:  # a group shares its prompt where the token ids are equal
            runs = group_runs([s.prompt_id for s in samples], group_size)
            groups, refused = prompt_groups([s.prompt_ids for s in samples], runs)
        data, metrics = prepare_rollout(
            self.models,
            self.cfg,
            batch,
            scores,
            [s.prompt_id for s in samples],
            group_size,
            kl_coef,
            None if token_rewards is None else token_rewards.to(device),
            old_logprobs=None if recompute else engine_lp,
            measure_kl=measure_kl,
            groups=groups,
        )
        if groups is not None:
            metrics["train/share_refused_groups"] = float(refused)
        if recompute:
            metrics.update(_engine_mismatch(samples, engine_lp, data))
        if from_engine:
            # PPO's ratio against the policy that actually sampled (it may be up to
            # max_policy_lag versions old): the clip then bounds the off-policy step too.
            data.old_logprobs = engine_lp
        if self.cfg.optimizer == "trpo":
            metrics.update(trpo_update(self.models, self.critic_opt, data, self.cfg, kl_coef))
        else:
            metrics.update(
                ppo_update(
                    self.models,
                    self.policy_opt,
                    self.critic_opt,
                    data,
                    self.cfg,
                    kl_coef,
                    seed=self.seed * 100_003 + self.step,
                )
            )
        # Ziegler et al. steer the per-sequence KL (summed over tokens). A NaN KL (a skipped,
        # broken step) must not poison the coefficient for the rest of the run.
        if "kl/seq_mean" in metrics and math.isfinite(metrics["kl/seq_mean"]):
            self.kl_ctl.update(metrics["kl/seq_mean"], len(samples))
        applied, trailing = metrics.pop("train/optimizer_steps"), metrics.pop("train/trailing_skipped")
        self.nan_streak = int(trailing) if applied > 0 else self.nan_streak + int(trailing)
        metrics["train/optimizer_steps"] = applied
        metrics["train/nan_streak"] = float(self.nan_streak)
        self.step += 1
        metrics["policy/lr"] = self.policy_sched.get_last_lr()[0]
        self.policy_sched.step()
        metrics["response_length/mean"] = sum(len(s.response_ids) for s in samples) / len(samples)
        metrics["samples/trained"] = float(len(samples))
        metrics["timing_s/train"] = time.perf_counter() - t0
        return self._mean_over_ranks(metrics)

    def _mean_over_ranks(self, metrics: dict[str, float]) -> dict[str, float]:
        summed = fsdp.all_reduce_metrics(metrics, self.models.device)
        return {k: v / self.world_size for k, v in summed.items()}

    # ------------------------------------------------------------ publish / export

    def publish(
        self, version: int, probe_ids: list[list[int]], every_rank: bool = False
    ) -> tuple[PolicyVersion, dict[str, Tensor] | None]:
        """Gather the full policy state dict and score the probes (collective). With LoRA, what
        model.lora.sync says: the merged weights, or only the adapters (peft names; the version's
        `adapter_config` then names them).

        probe_ids: sequences of >= 2 tokens. Rank 0 returns (PolicyVersion, state_dict with HF
        names); other ranks (PolicyVersion, None), or their own gathered copy with every_rank (the
        colocated handover: each copy is verified against rank 0's checksum where it is loaded).
        probe_logprobs[i][t-1] = log p(probe[t] | probe[:t]).
        """
        assert self.models is not None, "call setup() first"
        adapters_only = bool(self.lora and self.lora.sync == "adapters")
        if adapters_only:  # model.lora.sync=adapters: only the adapters are gathered and sent
            gathered = fsdp.full_parameters(self.models.policy, lambda n: ".lora_" in n, every_rank=every_rank)
            state_dict = lora.peft_named(gathered) if gathered else None
        else:
            state_dict = self._engine_state_dict(fsdp.full_state_dict(self.models.policy, every_rank=every_rank))
        probe_logprobs = self.probe_logprobs(probe_ids)
        meta = None
        if self.rank == 0:
            meta = (state_dict_checksum(state_dict), state_dict_bytes(state_dict))
        checksum, num_bytes = fsdp.broadcast_object(meta)
        adapter_config = self._adapter_config if adapters_only else ""
        pv = _policy_version(version, checksum, num_bytes, probe_ids, probe_logprobs, adapter_config)
        return pv, (state_dict if self.rank == 0 or every_rank else None)

    def publish_stream(
        self, version: int, probe_ids: list[list[int]], spec: weight_stream.GroupSpec, keep_state_dict: bool = False
    ) -> tuple[dict, dict[str, Tensor] | None]:
        """Score the probes, then stream the policy tensor by tensor to the weight-sync group
        (rollout.weight_sync=collective; collective over the FSDP ranks, rank 0 sends).

        -> ({"meta": PolicyVersion (None if the stream failed), "error", "send_s"}, state_dict):
        the checksum is over the bytes rank 0 sent; state_dict (HF names, a copy) only on rank 0
        with `keep_state_dict` (a Serve follower loads it from the object store)."""
        assert self.models is not None, "call setup() first"
        probe_logprobs = self.probe_logprobs(probe_ids)
        kept: dict[str, Tensor] = {}
        named = fsdp.full_tensors(self.models.policy)
        if keep_state_dict and self.rank == 0:
            named = weight_stream.keeping(named, kept)
        if self.rank == 0:
            if self._sync_group is None:
                self._sync_group = weight_stream.SyncGroup(rank=0)
            sent = weight_stream.send(self._sync_group, spec, named)
        else:
            sent = {"checksum": None, "num_bytes": 0, "error": None, "send_s": 0.0}
            for _ in named:  # take part in every gather
                pass
        sent = fsdp.broadcast_object(sent)
        meta = None
        if sent["error"] is None:
            meta = _policy_version(version, sent["checksum"], sent["num_bytes"], probe_ids, probe_logprobs)
        outcome = {"meta": meta, "error": sent["error"], "send_s": sent["send_s"]}
        return outcome, (kept if keep_state_dict and self.rank == 0 and meta is not None else None)

    def weight_layout(self) -> tuple[weight_stream.TensorSlot, ...]:
        """Names, dtypes and global shapes of what `publish_stream` sends, in its order (not collective)."""
        return weight_stream.layout_of(self.models.policy.state_dict().items())

    @torch.no_grad()
    def probe_logprobs(self, probe_ids: list[list[int]]) -> tuple[tuple[float, ...], ...]:
        """Policy logprob of each probe token given its prefix (collective: a sharded forward)."""
        if not probe_ids:
            return ()
        if any(len(p) < 2 for p in probe_ids):
            raise ValueError("every probe needs at least 2 tokens")
        ids, am = right_pad(probe_ids, self.pad_id)  # [P, T]
        dev = self.models.device
        lp, _ = policy_logprobs(self.models.policy, ids.to(dev), am.to(dev))
        lp = lp.cpu()
        return tuple(tuple(float(x) for x in lp[i, : len(p) - 1]) for i, p in enumerate(probe_ids))

    def _engine_state_dict(self, state_dict: dict[str, Tensor] | None) -> dict[str, Tensor] | None:
        """What the engines load: the gathered policy as it is, or with LoRA its merged weights
        (base + scale * B @ A under the plain HF names)."""
        if state_dict is None or not self.lora:
            return state_dict
        return lora.merged_state_dict(state_dict, self.lora_layers, lora.scaling(self.lora))

    def save_hf(self, out_dir: str) -> None:
        """Rank 0 writes an HF directory (config, safetensors, tokenizer files); collective.
        With LoRA: the merged model there, and the adapters as a peft directory in `adapter/`."""
        assert self.models is not None, "call setup() first"
        if not self.lora:
            export.save_hf(self.models.policy, self.model_path, out_dir, self.rank)
            return
        state_dict = fsdp.full_state_dict(self.models.policy)
        if self.rank == 0:
            export.write_hf_dir(self._engine_state_dict(state_dict), self.model_path, out_dir)
            lora.write_adapter_dir(state_dict, self._peft_cfg, Path(out_dir) / "adapter")
        fsdp.barrier()

    # ------------------------------------------------------------ checkpoint

    def save_checkpoint(self, ckpt_dir: str) -> dict:
        """Write policy, critic, optimizers (sharded, torch.distributed.checkpoint) and the small
        per-rank state into `ckpt_dir` (collective; returns once every rank has written)."""
        return learner_checkpoint.save(self, ckpt_dir)

    def load_checkpoint(self, ckpt_dir: str) -> dict:
        """Restore everything save_checkpoint wrote (collective, after setup()); see
        learner_checkpoint.load."""
        return learner_checkpoint.load(self, ckpt_dir)

    def shutdown(self) -> None:
        if self._sync_group is not None:
            self._sync_group.close()
        fsdp.destroy()


def _trainable(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The parameters an optimizer steps: all of them, or with LoRA the adapters (and a head)."""
    return [p for p in model.parameters() if p.requires_grad]


def _pad_id(config) -> int:
    """Right padding never gets attended to; any valid id works, the model's pad id reads best."""
    for name in ("pad_token_id", "eos_token_id"):
        v = getattr(config, name, None)
        if isinstance(v, list):
            v = v[0] if v else None
        if v is not None:
            return int(v)
    return 0


def _due(every: int, step: int) -> bool:
    """Whether an every-N-updates pass runs on update `step` (0 = never)."""
    return every > 0 and step % every == 0


def _engine_mismatch(samples: list[Sample], engine_lp: Tensor, data: RolloutTensors) -> dict[str, float]:
    """|engine logprob - learner old logprob| on response tokens: off-policy drift / weight-sync check.
    engine_lp: [N, T-1] engine_logprobs(samples) on the learner's device."""
    if any(len(s.response_logprobs) != len(s.response_ids) for s in samples):
        return {}
    diff = (engine_lp - data.old_logprobs).abs()
    on = data.mask.bool()
    return {
        "rollout/logprob_diff_mean": float(masked_mean(diff, data.mask)),
        "rollout/logprob_diff_max": float(diff[on].max()) if on.any() else 0.0,
    }


def _policy_version(
    version: int, checksum: str, num_bytes: int, probe_ids, probe_logprobs, adapter_config: str = ""
) -> PolicyVersion:
    return PolicyVersion(
        version=version,
        checksum=checksum,
        num_bytes=num_bytes,
        probe_ids=tuple(tuple(int(t) for t in p) for p in probe_ids),
        probe_logprobs=probe_logprobs,
        adapter_config=adapter_config,
    )
