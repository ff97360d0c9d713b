"""Suite-wide environment, set before anything imports torch, ray or vllm, and the one in-process
Ray (+ Serve) of a test session: Ray refuses a second `ray.init` in a process, so every test that
needs Ray in the pytest process itself shares these (runs started by the CLI have their own)."""

import os

import pytest

# torch's OpenMP threads spin-wait by default and stall for seconds when another process
# (a Ray actor, a vLLM engine) holds a core; passive waiting keeps the suite fast here.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def session_ray():
    """A private Ray on 127.0.0.1 (4 CPUs, own temp dir) for the whole session."""
    from rl_service.infra.session import local_ray

    with local_ray(num_cpus=4, prefix="rls-test-") as tmp:
        yield tmp


@pytest.fixture(scope="session")
def serve_port(session_ray):
    """Port of the Serve HTTP proxy (127.0.0.1) on the session Ray; Serve shut down at session end."""
    from ray import serve

    from rl_service.infra.env import free_port

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        yield port
    finally:
        serve.shutdown()


HEAVIEST_FIRST = [
    "integration/test_chaos.py",  # ~510 s in a loaded suite run (2026-12-02, -n 2)
    "integration/test_dataset_task.py",  # ~150 s
    "integration/test_colocated.py",  # ~150 s
    "e2e/test_sweep.py",  # ~150 s
    "integration/test_weight_stream.py",
    "e2e/test_serve_feedback.py",
    "integration/test_faults.py",
    "integration/test_train_loop.py",
]
"""Files handed to the xdist workers first (`--dist loadfile` gives out files in collection
order): longest first, so the suite does not end with one worker still in a 9-minute module
while the other idles. The rest keep their order."""


def pytest_collection_modifyitems(session, config, items):
    rank = {name: i for i, name in enumerate(HEAVIEST_FIRST)}
    here = os.path.dirname(__file__)

    def key(item) -> int:
        return rank.get(os.path.relpath(str(item.path), here), len(rank))

    items.sort(key=key)  # stable
