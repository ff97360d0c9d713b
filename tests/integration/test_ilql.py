"""ILQL's heads and decoding on real models (the losses themselves: tests/unit/algo/test_ilql.py).

- the ShiftedLMHead's logits are lm_head(h) + beta * (Q(h) - V(h)), computed by hand from the
  model's hidden states; beta 0 gives the policy's own logits exactly;
- episodes() takes the state of action t from the hidden state at len(prompt) - 1 + t, puts the
  reward on the last action only, and masks the rest (against a plain forward);
- an export loads in the HF engine (the serving engine) with its heads attached: the engine's
  logprobs are the shifted ones, also after a save / load round trip, on Llama and Qwen2;
- `rl-service train-ilql` end to end on a file of logged rows: exit 0, the paired comparison with
  the behaviour policy in summary.json (beta 0 minus itself is exactly 0), the heads in model/;
  a bad row is refused in one line (exit 2); `rl-service serve` refuses to put the export on a vLLM
  engine (which cannot apply the heads) in one line, before Ray starts.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from rl_service.algo.logprobs import token_logprobs
from rl_service.ilql.data import episodes
from rl_service.ilql.heads import ILQLHeads, ShiftedLMHead, save_heads, set_beta
from tests.integration.conftest import REPO


def _randomize(heads: ILQLHeads, seed: int = 0) -> ILQLHeads:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in heads.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return heads


def _tiny(arch: str, tiny_model_dir, tmp_path):
    """A tiny model of `arch` with the test tokenizer, saved as an HF directory."""
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    cfg = AutoConfig.for_model(
        arch, vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    out = tmp_path / arch
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_shifted_logits_and_the_engine_path(arch, tiny_model_dir, tmp_path):
    from rl_service.rollout.hf_engine import HFEngine

    model_dir = _tiny(arch, tiny_model_dir, tmp_path)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    heads = _randomize(ILQLHeads(model.config.hidden_size, model.config.vocab_size, 16)).eval()
    ids = torch.tensor([[1, 7, 8, 9, 10, 11]])
    with torch.no_grad():
        plain = model(input_ids=ids, output_hidden_states=True)
        h = plain.hidden_states[-1]
        q, v = heads(h)
        want = plain.logits + 2.0 * (q - v.unsqueeze(-1))
        model.set_output_embeddings(ShiftedLMHead(model.get_output_embeddings(), heads, 2.0))
        got = model(input_ids=ids).logits
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
        set_beta(model, 0.0)
        torch.testing.assert_close(model(input_ids=ids).logits, plain.logits, rtol=0, atol=0)

    save_heads(model_dir, heads, beta=2.0, width=16)  # the export: HF dir + heads + ilql.json
    engine = HFEngine(str(model_dir))
    assert engine.ilql
    seq = ids[0].tolist()
    want_lp = token_logprobs(want[:, :-1], ids[:, 1:])[0]
    torch.testing.assert_close(torch.tensor(engine.score([seq])[0]), want_lp, rtol=0, atol=1e-5)
    out = engine.generate_ids([seq[:3]], 1, 4, temperature=0)[0][0]  # greedy on the shifted logits
    with torch.no_grad():
        step = model.get_output_embeddings()  # beta 0 now: set it back to the export's
        step.beta = 2.0
        first = int(model(input_ids=torch.tensor([seq[:3]])).logits[0, -1].argmax())
    assert out.token_ids[0] == first


def test_episodes_take_each_state_before_its_action(tiny_model_dir):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    rows = [
        {"prompt": "12+34=", "completion": "46", "reward": 1.0},
        {"prompt": "5+5=", "completion": "1", "reward": 0.0, "token_ids": tok("1", add_special_tokens=False).input_ids},
    ]
    ep = episodes(model, tok, rows)
    p0 = tok("12+34=").input_ids
    a0 = tok("46", add_special_tokens=False).input_ids + [tok.eos_token_id]  # stopped: EOS is an action
    assert ep.actions[0, : len(a0)].tolist() == a0 and ep.mask[0].tolist() == [1.0] * len(a0)
    assert ep.rewards[0].tolist() == [0.0] * (len(a0) - 1) + [1.0]
    assert ep.mask[1].tolist() == [1.0] + [0.0] * (len(a0) - 1)  # given token ids, no EOS: cut by length
    with torch.no_grad():
        h = model(input_ids=torch.tensor([p0 + a0]), output_hidden_states=True).hidden_states[-1][0]
    for t in range(len(a0)):
        torch.testing.assert_close(ep.hidden[0, t], h[len(p0) - 1 + t], rtol=0, atol=1e-5)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rl_service.cli", *args], cwd=REPO, capture_output=True, text=True)


def test_train_ilql_on_logged_rows_and_serving_refuses_vllm(tiny_model_dir, tmp_path):
    rows = [
        {"prompt": f"{a}+{b}=", "completion": str(a + b + 1 - (a + b) % 2), "reward": float((a + b) % 2)}
        for a in range(10, 40)
        for b in range(10, 20)
    ]  # right on odd sums, one too many on even ones
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    common = [str(REPO / "configs" / "ilql.yaml"), f"run_root={tmp_path}", f"model.path={tiny_model_dir}",
              "task.num_eval=20", "ilql.steps=30", "ilql.eval_every=30", "ilql.eval_betas=[0.0,1.0]",
              "ilql.beta=2.0"]  # fmt: skip
    done = _cli("train-ilql", *common, "--data", str(data))
    assert done.returncode == 0, done.stderr[-3000:]
    s = json.loads((tmp_path / "ilql" / "summary.json").read_text())
    assert s["rows"] == len(rows) and set(s["by_beta"]) == {"0.0", "1.0", "2.0"}
    assert s["by_beta"]["0.0"]["sampled"]["minus_behaviour"] == 0.0  # the baseline is beta 0 itself
    assert (tmp_path / "ilql" / "model" / "ilql_heads.safetensors").is_file()
    assert len((tmp_path / "ilql" / "metrics.jsonl").read_text().splitlines()) == 30

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "1+1=", "completion": "2", "reward": "good"}\n')
    done = _cli("train-ilql", *common, "--data", str(bad))
    assert (
        done.returncode == 2 and done.stderr.strip() == f"error: {bad}:1: reward must be a finite number (got 'good')"
    )

    done = _cli("serve", "--checkpoint", str(tmp_path / "ilql" / "model"))
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1
    assert "only serve.engine hf decodes" in done.stderr
