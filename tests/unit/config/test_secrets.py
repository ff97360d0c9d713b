"""No open doors in the serve config: a non-loopback bind needs a key, and the key and the
feedback DSN (which may hold a database password) never reach a file, a dump or a repr."""

from __future__ import annotations

import json

import pytest
import yaml

from rl_service.cli.main import main
from rl_service.config import ConfigError, dump_config, load_config

KEY = "sk-unit-4f1d9a"
DSN = "postgresql://feedback:pw-7c2e@127.0.0.1:5999/rls"


@pytest.fixture(autouse=True)
def _no_env_key(monkeypatch):
    monkeypatch.delenv("RL_SERVICE_API_KEY", raising=False)


@pytest.mark.parametrize("host", ["0.0.0.0", "10.0.0.5", "192.0.2.7", "example.org"])
def test_a_non_loopback_bind_without_a_key_is_refused(host):
    with pytest.raises(ConfigError, match="not a loopback address and no API key"):
        load_config(None, [f"serve.host={host}"])


def test_serve_on_all_interfaces_without_a_key_exits_2_before_anything_starts(tmp_path, capsys):
    ckpt = tmp_path / "policy"
    ckpt.mkdir()
    (ckpt / "config.json").write_text("{}")
    assert main(["serve", "--checkpoint", str(ckpt), "--host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a loopback address and no API key" in err, err


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_loopback_binds_need_no_key(host):
    assert load_config(None, [f"serve.host={host}"]).serve.api_key is None


def test_a_key_from_the_config_or_the_environment_opens_a_public_bind(monkeypatch):
    cfg = load_config(None, ["serve.host=0.0.0.0", f"serve.api_key={KEY}"])
    assert cfg.serve.api_key.get_secret_value() == KEY
    monkeypatch.setenv("RL_SERVICE_API_KEY", KEY)
    assert load_config(None, ["serve.host=0.0.0.0"]).serve.host == "0.0.0.0"


def test_secrets_are_masked_in_every_dump_and_repr(tmp_path):
    cfg = load_config(None, [f"serve.api_key={KEY}", f"serve.feedback_dsn={DSN}"])
    dump_config(cfg, tmp_path / "config.yaml")  # the run dir's config.yaml
    texts = {
        "config.yaml": (tmp_path / "config.yaml").read_text(),
        "json dump (controller.json, W&B config)": json.dumps(cfg.model_dump(mode="json")),
        "repr": repr(cfg),
        "str": str(cfg.serve),
    }
    for where, text in texts.items():
        assert KEY not in text and "pw-7c2e" not in text, where
    saved = yaml.safe_load(texts["config.yaml"])["serve"]
    assert saved["api_key"] == "***" and saved["feedback_dsn"] == "***"
    # the secret is still there for the one place that uses it
    assert cfg.serve.feedback_dsn.get_secret_value() == DSN


def test_a_masked_config_loaded_back_refuses_the_mask_as_a_key(tmp_path):
    cfg = load_config(None, [f"serve.api_key={KEY}"])
    dump_config(cfg, tmp_path / "config.yaml")
    with pytest.raises(ConfigError, match="serve.api_key: .*'\\*\\*\\*' is how run files show a secret"):
        load_config(tmp_path / "config.yaml")
    without = load_config(tmp_path / "config.yaml", ["serve.api_key=null"])  # given again (or by env)
    assert without.serve.api_key is None


def test_a_serve_config_deployment_without_a_key_is_refused(monkeypatch):
    """deploy/serve.yaml binds Serve's proxy to 0.0.0.0 on every node: the builder wants a key."""
    from deploy.serve_app import app_builder

    with pytest.raises(ValueError, match="needs an API key"):
        app_builder({"checkpoint": "runs/quickstart/final"})
