"""Architecture-generic learner parts on tiny random models of every built architecture:
FSDP2 block discovery and the composed critic (ValueModel)."""

import pytest
import torch
from torch import nn
from transformers import AutoConfig, AutoModelForTokenClassification

from rl_service.config import TinyModelConfig
from rl_service.learner.critic import ValueModel, load_value_model
from rl_service.learner.fsdp import decoder_layers
from rl_service.models.tiny import build_tiny_model, save_random_model
from rl_service.models.tokenizer import build_tokenizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CORPUS = [f"{a}+{b}={a + b}" for a in range(20) for b in range(20)]
BLOCKS = {
    "llama": "LlamaDecoderLayer",
    "qwen2": "Qwen2DecoderLayer",
    "gpt2": "GPT2Block",
    "mistral": "MistralDecoderLayer",
}


def shape(arch: str, layers: int = 3) -> TinyModelConfig:
    return TinyModelConfig(architecture=arch, hidden_size=32, num_layers=layers, num_heads=2, intermediate_size=64)


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer(CORPUS, vocab_size=300)


@pytest.mark.parametrize("arch", sorted(BLOCKS))
def test_decoder_blocks_are_found_on_every_architecture(arch, tok):
    model = build_tiny_model(shape(arch), tok)
    blocks = decoder_layers(model)
    assert [type(b).__name__ for b in blocks] == [BLOCKS[arch]] * 3
    assert blocks == list(model.base_model.layers if arch != "gpt2" else model.transformer.h)
    # The critic wraps the same backbone: the same blocks, found through the wrapper.
    critic = ValueModel(model.base_model, model.base_model_prefix)
    assert decoder_layers(critic) == blocks


def test_blocks_fall_back_to_the_layer_stack_without_no_split_modules():
    class Plain(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(10, 4)
            self.heads = nn.ModuleList([nn.Linear(4, 4), nn.ReLU()])  # mixed: not a layer stack
            self.stack = nn.ModuleList([nn.Sequential(nn.Linear(4, 4)) for _ in range(3)])

    model = Plain()
    assert decoder_layers(model) == list(model.stack)
    with pytest.raises(TypeError, match="no decoder blocks"):
        decoder_layers(nn.Linear(2, 2))


def test_llama_value_model_keys_equal_token_classification_keys(tmp_path, tok):
    """Critic checkpoints written with LlamaForTokenClassification (before ValueModel) still load."""
    path = save_random_model(tmp_path / "llama", shape("llama", 2), CORPUS, chat_template=None)
    critic = load_value_model(str(path))
    config = AutoConfig.from_pretrained(path, num_labels=1)
    old = AutoModelForTokenClassification.from_pretrained(path, config=config, dtype=torch.float32)
    assert critic.prefix == "model"
    mine, theirs = critic.state_dict(), old.state_dict()
    assert list(mine) == list(theirs)
    assert all(mine[k].shape == theirs[k].shape for k in mine)
    assert all(torch.equal(mine[k], theirs[k]) for k in mine if not k.startswith("score."))
    critic.load_state_dict(theirs, strict=True)  # an old checkpoint's tensors load as they are


@pytest.mark.parametrize("arch", sorted(BLOCKS))
def test_value_model_starts_at_zero_with_the_policy_backbone(arch, tmp_path):
    from transformers import AutoModelForCausalLM

    path = save_random_model(tmp_path / arch, shape(arch, 2), CORPUS)
    critic = load_value_model(str(path)).eval()
    policy = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    prefix = policy.base_model_prefix  # model / transformer
    assert critic.prefix == prefix and set(critic.state_dict()) == (
        {k for k in policy.state_dict() if k.startswith(prefix + ".")} | {"score.weight", "score.bias"}
    )
    for k, v in critic.backbone.state_dict().items():
        assert torch.equal(v, policy.state_dict()[f"{prefix}.{k}"])
    assert critic.score.in_features == policy.config.hidden_size and critic.score.out_features == 1
    ids = torch.tensor([[1, 5, 6, 7], [1, 8, 9, 0]])
    am = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    values = critic(ids, am)
    assert values.shape == (2, 4) and values.dtype == torch.float32 and not values.any()
    with torch.no_grad():
        critic.score.bias.fill_(0.5)
    assert torch.allclose(critic(ids, am), torch.full((2, 4), 0.5))
