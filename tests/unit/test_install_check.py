"""The install stays importable: the Makefile ends every pip run with the removal of the CUDA-linked
packages and the import check, and that check finds what breaks an install.

The real venv is checked by tests/integration/test_install.py (CI runs it after `make bench-install`).
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rl_service.infra import install_check

ROOT = Path(__file__).resolve().parents[2]


def dry_run(*targets: str) -> list[str]:
    """The commands `make` would run for `targets` from scratch (-B: as on a fresh clone; -n: none run)."""
    out = subprocess.run(
        ["make", "-n", "-B", "-C", str(ROOT), *targets], capture_output=True, text=True, check=True
    ).stdout
    return [line.strip() for line in out.splitlines() if line.strip() and not line.lstrip().startswith("#")]


# commands that use the installed venv: none may run on a venv that a pip run left unchecked
USES_VENV = ("-m bench.run", "-m pytest", "rl-service train", "ruff check")


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
@pytest.mark.parametrize("target", ["install", "bench-install", "bench", "quickstart", "test"])
def test_every_pip_install_is_followed_by_the_removal_and_the_check(target):
    lines = dry_run(target)
    pip_installs = [i for i, line in enumerate(lines) if "-m pip install " in line]
    assert pip_installs, lines
    for i in pip_installs:
        assert "-c constraints-cpu.txt" in lines[i], f"pip run without the torch constraints: {lines[i]}"
        after = lines[i + 1 :]
        upto = next((j for j, line in enumerate(after) if any(u in line for u in USES_VENV)), len(after))
        segment = after[:upto]
        uninstall = [j for j, line in enumerate(segment) if "pip uninstall" in line]
        assert uninstall, f"{lines[i]!r} is not followed by the removal before {after[upto : upto + 1]}"
        assert all(p in segment[uninstall[-1]] for p in install_check.BREAKERS)
        checks = [j for j, line in enumerate(segment) if "rl_service.infra.install_check --cpu" in line]
        assert checks and checks[-1] > uninstall[-1], f"no import check after the removal for {lines[i]!r}"
    if target in ("bench", "bench-install"):
        assert any("bench]" in lines[i] for i in pip_installs), "the bench extra is never installed"
        assert any("install_check --cpu --bench" in line for line in lines)


def test_the_constraints_pin_the_local_cpu_torch():
    pins = [ln.strip() for ln in (ROOT / "constraints-cpu.txt").read_text().splitlines() if not ln.startswith("#")]
    assert "torch==2.13.0+cpu" in pins


def fake_package(root: Path, name: str, body: str = "") -> None:
    (root / name).mkdir()
    (root / name / "__init__.py").write_text(body)


def test_a_cuda_linked_package_on_the_path_fails_the_check(tmp_path):
    fake_package(tmp_path, "torchvision")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    res = subprocess.run(
        [sys.executable, "-m", "rl_service.infra.install_check", "--cpu"], capture_output=True, text=True, env=env
    )
    assert res.returncode == 1
    assert "torchvision is installed" in res.stderr
    assert "torchaudio" not in res.stderr.split("remove it")[0]  # only what is there is reported


def test_a_lazily_missing_name_fails_the_check(tmp_path, monkeypatch):
    # transformers' failure mode: the module imports, the name fails when first touched
    fake_package(
        tmp_path,
        "fake_lazy_lib",
        "def __getattr__(name):\n    raise ModuleNotFoundError(f'Could not import module {name!r}')\nOK = 1\n",
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    problems = install_check.import_problems((("fake_lazy_lib", ("OK", "PreTrainedModel")),))
    assert len(problems) == 1 and "PreTrainedModel" in problems[0] and "ModuleNotFoundError" in problems[0]
    assert install_check.import_problems((("fake_lazy_lib", ("OK",)),)) == []
    assert "No module named" in install_check.import_problems((("not_a_module_here", ()),))[0]
