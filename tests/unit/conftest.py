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
