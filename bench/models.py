"""The benchmark models, all built by the project's own `rl_service.models.build`.

- `tiny`: the quickstart shape (hidden 128, 4 layers, ~1.1M params).
- `30m`: hidden 512, 8 layers, 8 heads, MLP 1792 -> ~30.7M params (SFT, 240 steps, to 8%).
- `test`: the integration tests' shape (hidden 64, 2 layers, ~0.12M params), for --quick.
- `quickstart` (warm only): whatever configs/quickstart.yaml builds (the tiny shape today).

Two flavours:
- `warm_model(size)`: SFT warm start on the addition task (what the e2e runs train).
- `nonstop_model(size)`: random init with the lm_head rescaled so EOS (and the padded
  vocab rows the tokenizer never produces) practically never get sampled. Used for
  throughput: every completion runs to max_new_tokens, so "64 prompts x 256 tokens" is
  exactly that many tokens on both engines; the compute per token is the same as a
  trained model of that shape.

max_position_embeddings is 320 so a 256-token completion fits after the prompt.
"""

from __future__ import annotations

import json
from pathlib import Path

from bench.common import REPO

CACHE = REPO / ".cache" / "models"
MAX_POS = 320

SHAPES = {
    "test": dict(hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128),
    "tiny": dict(hidden_size=128, num_layers=4, num_heads=4, intermediate_size=512),
    "30m": dict(hidden_size=512, num_layers=8, num_heads=8, intermediate_size=1792),
}
# SFT until a base held-out exact match, so RL has room to improve. 30m: an SFT step costs
# ~25x the tiny model's (~1.8 s at batch 64 on a quiet 2-core box; measured under load:
# held-out 3% at step 100, ~10% at step 230, loss still falling at 320), so its bar is 15%
# rather than the quickstart's 30%: both sides of e2e_trl start from the same model anyway.
SFT = {
    "test": dict(max_steps=50),
    "tiny": dict(max_steps=3000),
    # Lowered 2026-11-23 (full-benchmark session, machine shared with training jobs): the
    # 15% build did not fit the session's ~12 min build budget; 240 steps / 8% does.
    "30m": dict(max_steps=240, batch_size=64, lr=1e-3, eval_every=40, target_accuracy=0.08),
}


def model_config(size: str, warm: bool):
    from rl_service.config import ModelConfig, SFTConfig, TinyModelConfig

    sft = SFTConfig(**SFT[size]) if warm else SFTConfig(max_steps=0)
    return ModelConfig(
        cache_dir=str(CACHE), build=TinyModelConfig(**SHAPES[size], max_position_embeddings=MAX_POS), sft=sft
    )


def warm_model(size: str) -> Path:
    """HF dir of the SFT-warm-started model (built once, then reused from .cache/models).
    `quickstart` = the model configs/quickstart.yaml builds (tiny shape, max_position 64)."""
    from rl_service.config import AdditionConfig, load_config
    from rl_service.models.build import ensure_model

    if size == "quickstart":
        cfg = load_config(REPO / "configs" / "quickstart.yaml")
        return ensure_model(cfg.model, cfg.task, cfg.seed, progress=True)
    return ensure_model(model_config(size, warm=True), AdditionConfig(), seed=0, progress=True)


def nonstop_model(size: str, logit_std: float = 4.0) -> Path:
    """Random-init model whose EOS / padded-vocab logits are 0 and the others have std
    ~`logit_std`: P(EOS) per token ~ 1 / (V * exp(std^2 / 2)) ~ 1e-6 at std 4."""

    def edit(model, tok, scale: float) -> None:
        head = model.lm_head.weight  # [V, H]
        head.mul_(scale)
        head[tok.eos_token_id] = 0
        head[len(tok) :] = 0  # rows no tokenizer id maps to

    return _random_variant(size, "nonstop", logit_std, edit)


def long_model(size: str, logit_std: float = 0.3) -> Path:
    """Random-init model that writes long completions with a spread of lengths: the vocab cut to
    the tokenizer's tokens (no padded rows to sample) and the lm_head scaled so the logits have
    std ~`logit_std`. Every token, EOS included, then has probability ~1/V (V = 259): EOS ends a
    completion after ~V tokens on average, geometric, so a 256-token cap keeps ~63% and the
    mean is ~160 tokens (bench/shapes.py "long"; 167 measured on the test shape, 64 samples)."""

    def edit(model, tok, scale: float) -> None:
        model.lm_head.weight.mul_(scale)

    return _random_variant(size, "long", logit_std, edit, vocab_to_tokenizer=True)


def _random_variant(size: str, kind: str, logit_std: float, edit, vocab_to_tokenizer: bool = False) -> Path:
    """`<kind>-<model>`: the random-init model of `size` with its lm_head edited by
    edit(model, tokenizer, logit_std / measured logit std), built once into .cache/models."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rl_service.config import AdditionConfig
    from rl_service.models.build import ensure_model

    src = ensure_model(model_config(size, warm=False), AdditionConfig(), seed=0, progress=False)
    out = CACHE / f"{kind}-{src.name}"
    if (out / "config.json").is_file():
        return out
    tok = AutoTokenizer.from_pretrained(src)
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    if vocab_to_tokenizer:
        model.resize_token_embeddings(len(tok))
    with torch.no_grad():
        ids = tok(["12+34=", "99+1=", "5+67="], return_tensors="pt", padding=True)
        edit(model, tok, logit_std / model(**ids).logits.std().item())
    tmp = out.with_name(out.name + ".tmp")
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    (tmp / "bench_info.json").write_text(json.dumps({"source": str(src), "logit_std": logit_std}))
    tmp.rename(out)
    return out


def num_params(path: Path) -> int:
    """Parameter count from build_info.json (written by models/build) or the config."""
    for f in (
        path / "build_info.json",
        Path(str(path).replace("nonstop-", "").replace("long-", "")) / "build_info.json",
    ):
        if f.is_file():
            return int(json.loads(f.read_text())["num_params"])
    cfg = json.loads((path / "config.json").read_text())
    h, i, L, V = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"], cfg["vocab_size"]
    return L * (4 * h * h + 3 * h * i + 2 * h) + 2 * V * h + h


if __name__ == "__main__":  # python -m bench.models 30m : build (or find) the warm-started model
    import sys

    from bench.common import setup_env

    setup_env()
    for size in sys.argv[1:] or ["30m"]:
        print(warm_model(size))
