"""context_length: the context of any HF config, whatever the architecture calls it."""

import json

import pytest

from rl_service.models.hf_config import DEFAULT_CONTEXT, context_length


@pytest.mark.parametrize(
    "config, expected",
    [
        ({"model_type": "llama", "max_position_embeddings": 64}, 64),
        ({"model_type": "gpt2", "n_positions": 1024, "n_ctx": 1024}, 1024),
        ({"model_type": "x", "seq_length": 512}, 512),
        ({"model_type": "llava", "text_config": {"max_position_embeddings": 4096}}, 4096),
        ({"model_type": "x"}, DEFAULT_CONTEXT),
    ],
)
def test_context_length_of_configs(config, expected):
    assert context_length(config) == expected


def test_context_length_of_a_saved_gpt2(tmp_path):
    from transformers import AutoConfig

    AutoConfig.for_model("gpt2", n_positions=96).save_pretrained(tmp_path)
    assert "max_position_embeddings" not in json.loads((tmp_path / "config.json").read_text())
    assert context_length(tmp_path) == context_length(str(tmp_path)) == 96
