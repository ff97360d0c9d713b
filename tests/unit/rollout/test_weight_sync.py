"""state_dict_checksum: identical tensors -> the same checksum, any change -> another; load_verified
hashes with the algorithm the publisher named and refuses a version whose checksum differs."""

import random
import types

import pytest
import torch

from rl_service.rollout import weight_sync
from rl_service.rollout.weight_sync import WeightSyncError, checksum_algo, load_verified, state_dict_checksum

ALGOS = sorted(weight_sync.HASHERS)


def state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "embed.weight": torch.randn(11, 6, generator=g),
        "layers.0.attn.q.weight": torch.randn(6, 6, generator=g),
        "layers.0.norm.weight": torch.ones(6),
        "layers.0.norm.bias": torch.zeros(6),
        "bf16.weight": torch.randn(3, 4, generator=g).to(torch.bfloat16),
        "step": torch.tensor(7),  # 0-dim
        "empty": torch.zeros(0, 3),
    }


def copy_of(sd: dict[str, torch.Tensor], order_seed: int) -> dict[str, torch.Tensor]:
    """Same tensors, fresh memory, another insertion order."""
    names = list(sd)
    random.Random(order_seed).shuffle(names)
    return {n: sd[n].clone() for n in names}


def test_xxh3_is_the_default_where_xxhash_is_installed():
    pytest.importorskip("xxhash")
    assert weight_sync.DEFAULT_ALGO == "xxh3_128"
    assert state_dict_checksum(state_dict()).startswith("xxh3_128:")


@pytest.mark.parametrize("algo", ALGOS)
def test_identical_tensors_give_the_same_checksum(algo):
    sd = state_dict()
    want = state_dict_checksum(sd, algo)
    assert checksum_algo(want) == algo
    for seed in range(5):
        assert state_dict_checksum(copy_of(sd, seed), algo) == want
    # a non-contiguous tensor hashes as its values, not its memory layout
    sd2 = dict(sd, **{"layers.0.attn.q.weight": sd["layers.0.attn.q.weight"].t().contiguous().t()})
    assert not sd2["layers.0.attn.q.weight"].is_contiguous()
    assert state_dict_checksum(sd2, algo) == want


def changes(sd: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """Each a state dict that differs from `sd` in one way."""
    q = "layers.0.attn.q.weight"
    one_ulp = sd[q].clone()
    one_ulp.view(-1)[17] = torch.nextafter(one_ulp.view(-1)[17], torch.tensor(float("inf")))
    neg_zero = sd["layers.0.norm.bias"].clone()
    neg_zero[2] = -0.0  # equal as a float, other bits
    swapped = dict(
        sd, **{"layers.0.norm.weight": sd["layers.0.norm.bias"], "layers.0.norm.bias": sd["layers.0.norm.weight"]}
    )
    renamed = {("layers.0.attn.k.weight" if n == q else n): t for n, t in sd.items()}
    return {
        "one ulp in one element": dict(sd, **{q: one_ulp}),
        "-0.0 for 0.0": dict(sd, **{"layers.0.norm.bias": neg_zero}),
        "same bytes, another dtype": dict(sd, **{q: sd[q].view(torch.int32)}),
        "same bytes, another shape": dict(sd, **{q: sd[q].reshape(3, 12)}),
        "bf16 -> fp16 bytes": dict(sd, **{"bf16.weight": sd["bf16.weight"].view(torch.float16)}),
        "two tensors swapped": swapped,
        "a tensor renamed": renamed,
        "a tensor removed": {n: t for n, t in sd.items() if n != "layers.0.norm.bias"},
        "an empty tensor removed": {n: t for n, t in sd.items() if n != "empty"},
        "an empty tensor reshaped": dict(sd, empty=torch.zeros(3, 0)),
        "a tensor added": dict(sd, extra=torch.zeros(1)),
        "0-dim value": dict(sd, step=torch.tensor(8)),
        "0-dim vs 1-element": dict(sd, step=torch.tensor([7])),
        # field boundaries: the bytes of one tensor moved into the next name's
        "bytes across a boundary": {
            "a": torch.arange(4, dtype=torch.uint8),
            "b": torch.arange(4, 6, dtype=torch.uint8),
        },
    }


@pytest.mark.parametrize("algo", ALGOS)
def test_any_change_gives_another_checksum(algo):
    sd = state_dict()
    seen = {state_dict_checksum(sd, algo): "original"}
    base_ab = {"a": torch.arange(3, dtype=torch.uint8), "b": torch.arange(3, 6, dtype=torch.uint8)}
    seen.setdefault(state_dict_checksum(base_ab, algo), "a/b split 3+3")
    for what, changed in changes(sd).items():
        got = state_dict_checksum(changed, algo)
        assert got not in seen, f"{what!r} hashes like {seen.get(got)!r}"
        seen[got] = what
    for seed in range(1, 20):  # random weights: all different
        got = state_dict_checksum(state_dict(seed), algo)
        assert got not in seen
        seen[got] = f"seed {seed}"


@pytest.mark.parametrize("algo", ALGOS)
def test_fields_are_framed(algo):
    # Hashing name, dtype, shape and bytes back to back would make these two one stream,
    # "atorch.uint8(1,)zbtorch.uint8(0,)": a byte of weights read as part of a name.
    one = {"a": torch.tensor([ord("z")], dtype=torch.uint8), "b": torch.zeros(0, dtype=torch.uint8)}
    other = {"atorch.uint8(1,)zb": torch.zeros(0, dtype=torch.uint8)}
    assert state_dict_checksum(one, algo) != state_dict_checksum(other, algo)


class FakeEngine:
    def __init__(self):
        self.loaded = []

    def load_weights(self, sd, version):
        self.loaded.append(version)

    def score(self, probes):
        return [[-1.0] * (len(p) - 1) for p in probes]


def meta(version: int, checksum: str):
    return types.SimpleNamespace(
        version=version, checksum=checksum, probe_ids=((1, 2, 3),), probe_logprobs=((-1.0, -1.0),)
    )


@pytest.mark.parametrize("algo", ALGOS)
def test_load_verified_hashes_with_the_published_algorithm(algo):
    sd, engine = state_dict(), FakeEngine()
    out = load_verified(engine, sd, meta(3, state_dict_checksum(sd, algo)), 1e-6, "w0")
    assert engine.loaded == [3] and out["probe_max_diff"] == 0.0
    with pytest.raises(WeightSyncError, match="checksum of version 4"):
        load_verified(engine, changes(sd)["one ulp in one element"], meta(4, state_dict_checksum(sd, algo)), 1e-6, "w0")
    assert engine.loaded == [3]  # a corrupt version is never loaded


def test_an_unknown_algorithm_is_refused_before_loading():
    sd, engine = state_dict(), FakeEngine()
    with pytest.raises(WeightSyncError, match="not available"):
        load_verified(engine, sd, meta(1, "md4:" + "0" * 32), None, "w0")
    assert engine.loaded == []
    assert checksum_algo("0" * 64) == "sha256"  # the old unprefixed form
