"""The experiment config: one pydantic section per component, variants keyed on their type.

    base.py        Section (unknown keys are errors, docstrings are descriptions), Resources
    task.py        task:     AdditionConfig | GuessNumberConfig | DatasetConfig (by `name`)
    model.py       model:    HF directory or the tiny model's shape and SFT warm start
    engine.py      rollout.engine / serve.engine: EngineConfig (shared)
    rollout.py     rollout:  workers, sampling, batch size, sync tolerance
    reward.py      reward:   function | weighted functions (fns) | reward model, teacher, error policy
    learner.py     learner:  FSDP2 learner; advantage GAEConfig | GroupAdvantageConfig (by `type`)
    train.py       train:    the loop; ray: how to reach Ray
    eval.py        eval:     held-out metrics beyond accuracy (ROUGE-L, BLEU, perplexity)
    serve.py       serve:    the OpenAI endpoint
    tracking.py    tracking: W&B, Ray metrics
    preference.py  preference: RMTrainConfig | DPOTrainConfig               (by `type`)
    run.py         Config (rl-service train), PreferenceRunConfig (train-rm / train-dpo)
    loading.py     YAML + dotted overrides -> validated config, or one ConfigError line

Never imports ray, vllm or torch: a bad config fails in well under a second, before Ray starts.
"""

from rl_service.config.base import Resources, Section
from rl_service.config.engine import EngineConfig
from rl_service.config.eval import EvalConfig
from rl_service.config.learner import (
    AdvantageConfig,
    GAEConfig,
    GroupAdvantageConfig,
    KLConfig,
    LearnerConfig,
    TRPOConfig,
)
from rl_service.config.loading import (
    ConfigError,
    build_config,
    dump_config,
    load_config,
    load_preference_config,
    parse_overrides,
    read_config_data,
    validate,
)
from rl_service.config.model import LoraConfig, ModelConfig, SFTConfig, TinyModelConfig
from rl_service.config.preference import DPOTrainConfig, PreferenceConfig, RMTrainConfig
from rl_service.config.reward import RewardConfig, RewardTermConfig
from rl_service.config.rollout import RolloutConfig
from rl_service.config.run import Config, PreferenceRunConfig, RunHeader
from rl_service.config.serve import ServeConfig
from rl_service.config.task import AdditionConfig, DatasetConfig, GuessNumberConfig, TaskConfig
from rl_service.config.tracking import TrackingConfig
from rl_service.config.train import RayConfig, TrainConfig

__all__ = [
    "AdditionConfig",
    "AdvantageConfig",
    "Config",
    "ConfigError",
    "DPOTrainConfig",
    "EngineConfig",
    "EvalConfig",
    "GAEConfig",
    "GroupAdvantageConfig",
    "DatasetConfig",
    "GuessNumberConfig",
    "KLConfig",
    "LearnerConfig",
    "LoraConfig",
    "ModelConfig",
    "PreferenceConfig",
    "PreferenceRunConfig",
    "TRPOConfig",
    "RMTrainConfig",
    "RayConfig",
    "Resources",
    "RewardConfig",
    "RewardTermConfig",
    "RolloutConfig",
    "RunHeader",
    "SFTConfig",
    "Section",
    "ServeConfig",
    "TaskConfig",
    "TinyModelConfig",
    "TrackingConfig",
    "TrainConfig",
    "build_config",
    "dump_config",
    "load_config",
    "load_preference_config",
    "parse_overrides",
    "read_config_data",
    "validate",
]
