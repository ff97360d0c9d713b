"""Config variants keyed on their type: each carries only its own fields, the old flat layout
still loads (and means the same), and a field of another variant is an error naming it."""

from pathlib import Path

import pytest
import yaml

from rl_service.config import (
    ConfigError,
    DPOTrainConfig,
    EngineConfig,
    GAEConfig,
    GroupAdvantageConfig,
    RMTrainConfig,
    dump_config,
    load_config,
    load_preference_config,
)
from rl_service.config.loading import load_ilql_config, load_online_config

ROOT = Path(__file__).resolve().parents[3]
QUICKSTART = ROOT / "configs" / "quickstart.yaml"
LEGACY = Path(__file__).parent / "legacy_quickstart.yaml"


def test_legacy_flat_gae_fields_fold_into_the_estimator():
    flat = load_config(None, ["learner.advantage=gae", "learner.gamma=0.9", "learner.whiten_advantages=false"])
    nested = load_config(
        None, ["learner.advantage.type=gae", "learner.advantage.gamma=0.9", "learner.advantage.whiten=false"]
    )
    assert isinstance(flat.learner.advantage, GAEConfig)
    assert flat.learner.advantage == nested.learner.advantage
    assert flat.learner.advantage.gamma == 0.9 and flat.learner.advantage.whiten is False


def test_a_config_written_for_the_old_tree_loads_the_same():
    """legacy_quickstart.yaml is configs/quickstart.yaml as the flat layout had it (a5ea2fa)."""
    assert load_config(LEGACY) == load_config(QUICKSTART)


def test_legacy_gae_fields_are_ignored_by_a_group_estimator_as_before():
    # the old quickstart sets learner.critic_lr (flat); switching the estimator by override still loads
    cfg = load_config(LEGACY, ["learner.advantage=grpo"])
    assert cfg.learner.advantage == GroupAdvantageConfig(type="grpo")
    assert not cfg.learner.advantage.uses_critic


def test_a_field_of_another_variant_is_an_error():
    with pytest.raises(ConfigError, match=r"learner.gamma: unknown key"):
        load_config(None, ["learner.advantage.type=rloo", "learner.gamma=0.9"])
    with pytest.raises(ConfigError, match=r"task.digits: unknown key"):
        load_config(None, ["task.name=guess_number", "task.digits=3"])
    with pytest.raises(ConfigError, match=r"learner.advantage.type: 'ppo' is not one of"):
        load_config(None, ["learner.advantage=ppo"])


def test_one_engine_section_for_rollout_and_serve():
    cfg = load_config(None, ["rollout.engine=hf", "rollout.dtype=bfloat16", "serve.engine=hf", "serve.kv_cache_gib=1"])
    assert cfg.rollout.engine == EngineConfig(name="hf", dtype="bfloat16")
    assert cfg.serve.engine == EngineConfig(name="hf", kv_cache_gib=1.0)
    assert type(cfg.rollout.engine) is type(cfg.serve.engine)


def test_dumped_config_loads_back_equal(tmp_path):
    cfg = load_config(QUICKSTART, ["learner.advantage=rloo", "task.digits=3"])
    dump_config(cfg, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == cfg
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["learner"]["advantage"] == {"type": "rloo"}


def test_preference_variant_from_the_command(tmp_path):
    rm = load_preference_config(ROOT / "configs" / "rm.yaml", kind="rm")
    dpo = load_preference_config(ROOT / "configs" / "dpo.yaml", kind="dpo")
    assert isinstance(rm.preference, RMTrainConfig) and rm.preference.rm_lm_coef == 1.0
    assert isinstance(dpo.preference, DPOTrainConfig) and dpo.preference.beta == 0.2
    # a typed section is strict; the old untyped one ignores the other kind's fields, as it did
    with pytest.raises(ConfigError, match=r"preference.beta: unknown key"):
        load_preference_config(ROOT / "configs" / "rm.yaml", ["preference.type=rm", "preference.beta=0.3"], kind="rm")
    assert load_preference_config(ROOT / "configs" / "rm.yaml", kind="dpo").preference == DPOTrainConfig(
        **{k: v for k, v in rm.preference.model_dump().items() if k in DPOTrainConfig.model_fields and k != "type"}
    )
    (tmp_path / "p.yaml").write_text("preference: {type: dpo}\n")
    with pytest.raises(ConfigError, match=r"preference.type: 'dpo', but this command trains 'rm'"):
        load_preference_config(tmp_path / "p.yaml", kind="rm")


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "configs").glob("*.yaml")))
def test_every_shipped_config_validates(name):
    """Every experiment config of the repo still loads (those naming models trained by another
    run only fail on that path, checked by the config itself)."""
    path = ROOT / "configs" / name
    data = yaml.safe_load(path.read_text())
    try:
        if "online" in data:
            load_online_config(path)
        elif "ilql" in data:
            load_ilql_config(path)
        elif "preference" in data:
            load_preference_config(path, kind="dpo" if "beta" in data["preference"] else "rm")
        else:
            load_config(path)
    except ConfigError as err:
        assert "is not an HF model directory" in str(err), err


@pytest.mark.parametrize(
    "name, key",  # cache keys of the shipped configs as the flat pre-variant schema computed them (a5ea2fa)
    [("quickstart", "a24de7204bd7"), ("guess_number", "74afcd39080b"), ("rm", "09b417fcfb74"), ("dpo", "a24de7204bd7")],
)
def test_built_models_are_reused_across_the_redesign(name, key):
    from rl_service.models.build import cache_key

    path = ROOT / "configs" / f"{name}.yaml"
    cfg = load_preference_config(path, kind=name) if name in ("rm", "dpo") else load_config(path)
    assert cache_key(cfg.model, cfg.task, cfg.seed) == key


def test_eval_metrics_need_references_a_dataset_task_has():
    refs = r"eval.metrics \['rouge_l', 'perplexity'\] compare with references.*'addition'"
    with pytest.raises(ConfigError, match=refs):
        load_config(QUICKSTART, ["eval.metrics=[rouge_l,perplexity]"])
    unknown = r"eval.metrics.0: Input should be 'rouge_l', 'bleu' or 'perplexity' \(got 'meteor'\)"
    with pytest.raises(ConfigError, match=unknown):
        load_config(QUICKSTART, ["eval.metrics=[meteor]"])
    with pytest.raises(ConfigError, match=r"lists a metric twice"):
        load_config(QUICKSTART, ["eval.metrics=[perplexity,perplexity]", "eval.perplexity_file=x.txt"])
    cfg = load_config(QUICKSTART, ["eval.metrics=[perplexity]", "eval.perplexity_file=held.txt"])
    assert cfg.eval.metrics == ["perplexity"] and not cfg.eval.needs_references


def test_lora_fields_and_the_sync_it_needs():
    cfg = load_config(QUICKSTART, ["model.lora.r=8", "model.lora.target_modules=[q_proj,v_proj]"])
    assert (cfg.model.lora.r, cfg.model.lora.alpha, cfg.model.lora.target_modules) == (8, 16.0, ["q_proj", "v_proj"])
    with pytest.raises(ConfigError, match=r"model.lora: .*rollout.weight_sync=collective streams the raw parameters"):
        load_config(QUICKSTART, ["model.lora.r=8", "rollout.weight_sync=collective"])
    with pytest.raises(ConfigError, match=r"model.lora.dropout"):
        load_config(QUICKSTART, ["model.lora.r=8", "model.lora.dropout=1.0"])
