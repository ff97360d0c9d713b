"""YAML + dotted overrides -> a validated config, or one ConfigError line naming the key.

    cfg = load_config("configs/quickstart.yaml", ["learner.lr=1e-5", "rollout.num_workers=2"])

Everything here runs before Ray starts and imports nothing heavy: a bad config (unknown key,
wrong type, impossible combination, unimportable reward function) exits 2 in well under a
second (the CLI turns ConfigError into `error: <line>`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar, get_args

import yaml
from pydantic import BaseModel, ValidationError

from rl_service.config.learner import GAEConfig, GroupAdvantageConfig
from rl_service.config.preference import DPO_ONLY_FIELDS, RM_ONLY_FIELDS, DPOTrainConfig, RMTrainConfig
from rl_service.config.run import Config, PreferenceRunConfig
from rl_service.config.task import AdditionConfig, DatasetConfig, GuessNumberConfig

M = TypeVar("M", bound=BaseModel)


class ConfigError(ValueError):
    """A config problem, reported as one line naming the key (CLI exit code 2)."""


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """`a.b=1` strings -> nested dict; values parsed as YAML scalars (`1e-5`, `true`, `[1,2]`)."""
    out: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value (e.g. learner.lr=1e-5)")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else None
        except yaml.YAMLError as err:  # e.g. `"\d+"`: YAML double quotes take escapes; use '\d+'
            raise ConfigError(f"override {key!r}: not valid YAML ({str(err).splitlines()[0]})") from None
        # YAML reads "1e-5" as a string; accept float-looking strings as floats.
        if isinstance(value, str):
            try:
                value = float(value) if any(c in value for c in ".eE") else value
            except ValueError:
                pass
        node = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {key!r}: {p!r} is not a section")
        node[parts[-1]] = value
    return out


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for k, v in extra.items():
        merged[k] = _merge(merged[k], v) if isinstance(v, dict) and isinstance(merged.get(k), dict) else v
    return merged


def _first_error(err: ValidationError) -> str:
    e = err.errors()[0]
    # a variant's tag (`task.addition.digits`) is not a key the user wrote: leave it out
    loc = ".".join(str(p) for p in e["loc"] if not _is_variant_tag(p)) or "config"
    msg = e["msg"].removeprefix("Value error, ")
    if e["type"] in ("union_tag_invalid", "union_tag_not_found"):  # the variant's type field
        ctx = e.get("ctx", {})
        key = f"{loc}.{str(ctx.get('discriminator', 'type')).strip(chr(39))}"
        if e["type"] == "union_tag_not_found":
            return f"{key}: missing (one of {ctx.get('expected_tags')})"
        return f"{key}: {ctx.get('tag')!r} is not one of {ctx.get('expected_tags')}"
    if e["type"] == "extra_forbidden":
        return f"{loc}: unknown key (check the spelling; see rl_service/config/)"
    if e["type"] in ("value_error", "assertion_error") and not e["loc"]:
        return msg
    head = msg.split(":", 1)[0]
    if e["type"] == "value_error" and isinstance(e.get("input"), dict) and head.split(".")[0] in e["input"]:
        return f"{loc}.{msg}"  # a section's validator naming one of its keys: `reward.fns.1.name: ...`
    if "input" in e and not isinstance(e.get("input"), dict):
        return f"{loc}: {msg} (got {e.get('input')!r})"
    return f"{loc}: {msg}"


# The tags of every variant (what pydantic puts in an error's location), from their Literal types.
_VARIANT_TAGS = {
    tag
    for cls, key in (
        (AdditionConfig, "name"),
        (GuessNumberConfig, "name"),
        (DatasetConfig, "name"),
        (GAEConfig, "type"),
        (GroupAdvantageConfig, "type"),
        (RMTrainConfig, "type"),
        (DPOTrainConfig, "type"),
    )
    for tag in get_args(cls.model_fields[key].annotation)
}


def _is_variant_tag(part: Any) -> bool:
    return isinstance(part, str) and part in _VARIANT_TAGS


def validate(cls: type[M], data: dict[str, Any]) -> M:
    """Validate a top-level config model; the first problem becomes a one-line ConfigError."""
    try:
        return cls.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_first_error(err)) from None


def read_config_data(path: str | Path | None, overrides: list[str] | None = None) -> dict[str, Any]:
    """YAML file (or {} when path is None) with the dotted overrides merged in, not yet validated."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {str(p)!r} not found")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{p}: not valid YAML ({str(err).splitlines()[0]})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{p}: top level must be a mapping")
    return _merge(data, parse_overrides(overrides or []))


def build_config(data: dict[str, Any], cls: type[M] = Config) -> M:
    """Validate `rl-service train` data (or another command's config class with a `reward:`
    section) and check its reward functions resolve and take their args."""
    from rl_service.reward.combined import reward_config_problem  # imports nothing heavy

    cfg = validate(cls, data)
    problem = reward_config_problem(cfg.reward)
    if problem:
        raise ConfigError(problem)
    return cfg


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    """Read YAML (or defaults when path is None), apply dotted overrides, validate."""
    return build_config(read_config_data(path, overrides))


def load_online_config(path: str | Path | None, overrides: list[str] | None = None):
    """YAML + overrides -> OnlineRunConfig (`rl-service online`)."""
    from rl_service.config.online import OnlineRunConfig

    return build_config(read_config_data(path, overrides), OnlineRunConfig)


def load_ilql_config(path: str | Path | None, overrides: list[str] | None = None):
    """YAML + overrides -> ILQLRunConfig (`rl-service train-ilql`)."""
    from rl_service.config.ilql import ILQLRunConfig

    return build_config(read_config_data(path, overrides), ILQLRunConfig)


def load_preference_config(
    path: str | Path | None, overrides: list[str] | None = None, kind: str | None = None
) -> PreferenceRunConfig:
    """YAML + overrides -> PreferenceRunConfig. `kind` (rm | dpo, from the command) is the
    `preference.type` when the file gives none, and must agree with it when it does."""
    data = read_config_data(path, overrides)
    pref = data.get("preference")
    if kind is not None and (pref is None or isinstance(pref, dict)):
        given = (pref or {}).get("type")
        if given is not None and given != kind:
            raise ConfigError(f"preference.type: {given!r}, but this command trains {kind!r} (train-{kind})")
        if given is None:  # the old layout, one section for both kinds: the other kind's fields were ignored
            other = RM_ONLY_FIELDS if kind == "dpo" else DPO_ONLY_FIELDS
            pref = {k: v for k, v in (pref or {}).items() if k not in other}
        data = {**data, "preference": {**(pref or {}), "type": kind}}
    return validate(PreferenceRunConfig, data)


def dump_config(cfg: BaseModel, path: str | Path) -> None:
    """The resolved config as YAML (the run dir's config.yaml; it loads back with load_config)."""
    Path(path).write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
