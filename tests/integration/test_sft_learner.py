"""The SFT learner under real torch.distributed (gloo): 2 processes take the same steps as 1.

The loss is the mean over the whole batch's response tokens (each rank divides by the global
count, times world_size for FSDP's gradient averaging), so the loss, the updated weights and the
greedy completions of a 1-process and a 2-process run agree, and the first loss equals a plain
per-example cross-entropy loop over the response tokens of the untrained model.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

from rl_service.config import LearnerConfig, SFTConfig, TinyModelConfig
from rl_service.infra.env import free_port
from rl_service.models.evaluate import greedy_generate_ids
from rl_service.sft.learner import SFTLearner

PAIRS = [(f"{a}+{b}=", str(a + b)) for a, b in [(1, 2), (13, 4), (7, 7), (20, 31), (5, 9), (44, 1), (3, 3)]]
PAIRS += [("abc>", "cba"), ("hello>", "olleh"), ("xy>", "yx"), ("q>", "q"), ("rl>", "lr")]  # 12 rows


@dataclass(frozen=True)
class Ex:
    prompt_ids: tuple[int, ...]
    response_ids: tuple[int, ...]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    from rl_service.models.tiny import build_tiny_model
    from rl_service.models.tokenizer import build_tokenizer

    out = tmp_path_factory.mktemp("sft-model")
    tok = build_tokenizer([p + r for p, r in PAIRS], vocab_size=300)
    torch.manual_seed(0)
    shape = TinyModelConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)
    build_tiny_model(shape, tok).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def _examples(model_dir: Path) -> list[Ex]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    return [
        Ex(tuple(tok(p).input_ids), tuple(tok(r, add_special_tokens=False).input_ids) + (tok.eos_token_id,))
        for p, r in PAIRS
    ]


def _worker(rank: int, world_size: int, port: int, model_dir: str, examples: list[Ex], out: str) -> None:
    # micro_batch_size 4: 12 rows -> 12 on one rank (3 micro-batches) or 6 + 6 (2 each, one partial)
    cfg = LearnerConfig(num_workers=world_size, backend="gloo", micro_batch_size=4)
    learner = SFTLearner(cfg, SFTConfig(max_steps=10, lr=3e-3), model_dir, rank, world_size, "127.0.0.1", port, 0)
    try:
        learner.setup()
        metrics = [learner.train_step(examples), learner.train_step(examples[:5])]  # 5 rows: 3 + 2 on 2 ranks
        completions = learner.generate([e.prompt_ids for e in examples], max_new_tokens=4)
        learner.save_hf(os.path.join(out, "hf"))
        torch.save({"metrics": metrics, "completions": completions}, os.path.join(out, f"rank{rank}.pt"))
    finally:
        learner.shutdown()


def _plain_loss(model_dir: Path, examples: list[Ex]) -> float:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for e in examples:
            seq = torch.tensor([e.prompt_ids + e.response_ids])
            logits = model(input_ids=seq).logits[0]
            for t in range(len(e.prompt_ids), seq.shape[1]):
                total += float(F.cross_entropy(logits[t - 1 : t], seq[0, t : t + 1]))
                count += 1
    return total / count


def test_two_processes_match_one_and_a_plain_loop(model_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    examples = _examples(model_dir)
    contexts = {}
    for w in (1, 2):
        (tmp_path / f"w{w}").mkdir()
        contexts[w] = mp.spawn(
            _worker, nprocs=w, join=False, args=(w, free_port(), str(model_dir), examples, str(tmp_path / f"w{w}"))
        )
    for ctx in contexts.values():
        while not ctx.join():
            pass
    res = {w: [torch.load(tmp_path / f"w{w}" / f"rank{r}.pt", weights_only=False) for r in range(w)] for w in (1, 2)}
    m1, m2 = res[1][0]["metrics"], res[2][0]["metrics"]
    untimed = [{k: v for k, v in m.items() if not k.startswith("timing")} for m in m2 + res[2][1]["metrics"]]
    assert untimed[:2] == untimed[2:]  # every rank reports the same (all-reduced) metrics
    plain = _plain_loss(model_dir, examples)
    print(f"\nfirst loss: plain {plain:.6f}, 1 proc {m1[0]['loss/sft']:.6f}, 2 procs {m2[0]['loss/sft']:.6f}")
    assert abs(m1[0]["loss/sft"] - plain) < 1e-5 and abs(m2[0]["loss/sft"] - plain) < 1e-5
    for a, b in zip(m1, m2):
        assert abs(a["loss/sft"] - b["loss/sft"]) < 1e-5 and abs(a["grad_norm"] - b["grad_norm"]) < 1e-4
        assert a["tokens/response"] == b["tokens/response"] and a["train/skipped_steps"] == 0
    assert m1[0]["tokens/response"] == sum(len(e.response_ids) for e in examples)

    one = AutoModelForCausalLM.from_pretrained(tmp_path / "w1" / "hf", dtype=torch.float32).eval()
    two = AutoModelForCausalLM.from_pretrained(tmp_path / "w2" / "hf", dtype=torch.float32).eval()
    start = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    sd1, sd2, sd0 = one.state_dict(), two.state_dict(), start.state_dict()
    assert max(float((sd1[k] - sd2[k]).abs().max()) for k in sd1) < 1e-5
    assert max(float((sd1[k] - sd0[k]).abs().max()) for k in sd1) > 1e-4  # the steps moved the weights
    # rank 0's completions are the exported weights' greedy completions; rank 1 returns None
    assert res[2][1]["completions"] is None
    tok_cfg = one.config
    ref = greedy_generate_ids(one, [e.prompt_ids for e in examples], tok_cfg.pad_token_id, tok_cfg.eos_token_id, 4)
    assert res[1][0]["completions"] == ref == res[2][0]["completions"]
    assert (tmp_path / "w2" / "hf" / "tokenizer.json").is_file()
