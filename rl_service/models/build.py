"""Build (or reuse) the tiny model: tokenizer -> random model (model.build.architecture) -> SFT -> HF directory.

The cache key hashes everything that changes the weights (task, shape, SFT, seed,
FORMAT_VERSION), so `<cache_dir>/tiny-<key>` is a pure function of the config. Builds
land in a temp dir and are renamed into place; a racing process that loses the rename
throws its copy away, so readers never see a half-written model.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from rl_service.config import ModelConfig, TaskConfig

FORMAT_VERSION = 1
"""Bump when the build recipe changes so old cached models are not reused."""
BUILD_INFO = "build_info.json"
DATASET_RECIPE = 1
"""Bump when the random-init build of a dataset task changes (its keys only)."""
ROLE_WORDS = "system:\nuser:\nassistant:\n"
"""Added to a dataset task's tokenizer corpus so the chat template's role markers are few tokens."""


def _task_key(task_cfg: TaskConfig) -> dict:
    """The task's part of the key, as the flat pre-variant TaskConfig dumped it (so models built
    before the task had variants are reused): addition without the env fields, guess_number
    with the addition default `digits: 2` it then carried; a dataset task with its data's hash."""
    task = task_cfg.model_dump(mode="json")
    if task["name"] == "dataset":  # the tokenizer is trained on the rows: their bytes are in the key
        task["train_sha256"] = hashlib.sha256(Path(task_cfg.train).read_bytes()).hexdigest()
        task["recipe"] = DATASET_RECIPE
    elif task["name"] != "addition":
        task.setdefault("digits", 2)
    return task


def _build_key(model_cfg: ModelConfig) -> dict:
    """The model shape's part of the key; the default architecture (llama) is left out, so the
    keys of models built before `architecture` existed stay the same."""
    build = model_cfg.build.model_dump(mode="json")
    if build["architecture"] == "llama":
        del build["architecture"]
    return build


def cache_key(model_cfg: ModelConfig, task_cfg: TaskConfig, seed: int) -> str:
    payload = {
        "build": _build_key(model_cfg),
        "sft": model_cfg.sft.model_dump(mode="json"),
        "task": _task_key(task_cfg),
        "seed": seed,
        "format": FORMAT_VERSION,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


def load_build_info(path: str | Path) -> dict | None:
    """build_info.json of a built model dir, or None (e.g. a user-supplied model.path)."""
    f = Path(path) / BUILD_INFO
    return json.loads(f.read_text()) if f.is_file() else None


def ensure_model(model_cfg: ModelConfig, task_cfg: TaskConfig, seed: int, progress: bool = True) -> Path:
    """Path of an HF model dir (model + tokenizer + generation_config) ready to load."""
    if model_cfg.path is not None:
        return Path(model_cfg.path)  # validated by ModelConfig
    cache_dir = Path(model_cfg.cache_dir)
    target = cache_dir / f"tiny-{cache_key(model_cfg, task_cfg, seed)}"
    if (target / BUILD_INFO).is_file():
        print(f"[models] reusing built model {target}", flush=True)
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=cache_dir))
    try:
        info = _build_into(tmp, model_cfg, task_cfg, seed, progress)
        (tmp / BUILD_INFO).write_text(json.dumps(info, indent=2))
        try:
            os.rename(tmp, target)  # atomic; fails if another process already put a model there
        except OSError:
            if not (target / BUILD_INFO).is_file():
                raise
            print(f"[models] another process built {target} first; using it", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _build_into(out: Path, model_cfg: ModelConfig, task_cfg: TaskConfig, seed: int, progress: bool) -> dict:
    import torch  # heavy imports only when actually building

    from rl_service.models.sft import sft_warm_start
    from rl_service.models.tiny import ARCHITECTURE_NAMES, build_tiny_model, num_params
    from rl_service.models.tokenizer import DEFAULT_CHAT_TEMPLATE, build_tokenizer
    from rl_service.tasks import make_task

    start = time.perf_counter()
    task = make_task(task_cfg)
    dataset = task_cfg.name == "dataset"
    if dataset:  # your rows may be chat messages: the tokenizer gets a template, its role words merged
        corpus = task.corpus() + [ROLE_WORDS] * 200
        tokenizer = build_tokenizer(corpus, model_cfg.build.vocab_size, chat_template=DEFAULT_CHAT_TEMPLATE)
    else:
        tokenizer = build_tokenizer(task.corpus(), model_cfg.build.vocab_size)
    with torch.random.fork_rng(devices=[]):  # seeded init without clobbering the caller's RNG
        torch.manual_seed(seed)
        model = build_tiny_model(model_cfg.build, tokenizer)
    n = num_params(model)
    b = model_cfg.build
    sft_target = f"{model_cfg.sft.target_accuracy:.0%}"
    print(
        f"[models] building tiny {ARCHITECTURE_NAMES[b.architecture]} ({n / 1e6:.2f}M params, "
        f"hidden {b.hidden_size}, {b.num_layers} layers, "
        f"vocab {len(tokenizer)}) + "
        + (
            "nothing: random init (warm start: rl-service sft)" if dataset else f"SFT to {sft_target} held-out accuracy"
        ),
        flush=True,
    )
    if dataset:  # random init: the warm start on your data is `rl-service sft`
        result = {"accuracy": None, "steps": 0, "loss": None, "threads": torch.get_num_threads()}
    else:
        with torch.random.fork_rng(devices=[]):
            result = sft_warm_start(model, tokenizer, task, model_cfg.sft, seed, progress=progress)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    info = {
        "base_accuracy": result["accuracy"],
        "sft_steps": result["steps"],
        "sft_loss": result["loss"],
        "sft_threads": result["threads"],
        "num_params": n,
        "build_seconds": round(time.perf_counter() - start, 2),
        "vocab_size": len(tokenizer),
    }
    accuracy = "n/a" if result["accuracy"] is None else f"{result['accuracy']:.3f}"
    print(
        f"[models] built: {result['steps']} SFT steps, held-out accuracy {accuracy}, {info['build_seconds']:.0f}s",
        flush=True,
    )
    return info
