import pytest
import torch


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models: 1 thread is as fast, and 2 OpenMP threads stall badly when other
    processes keep a core busy (see sft._pick_threads)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_llama(vocab_size: int = 32):
    """A 1-layer, 16-wide random Llama in eval mode (the learner's unit tests' policy)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=32,
    )
    return LlamaForCausalLM(cfg).eval()
