"""Layering rule 1: algo/, config/, types.py and learner/batching.py never import ray or vllm.

Walks the imports statically (AST, every `import` anywhere in the file, including ones
inside functions) and follows `rl_service.*` imports recursively, so an indirect path
(algo -> some rl_service module -> ray) fails too, with the chain in the message.
Files that are not written yet are skipped, except that algo/ must exist.
"""

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PKG = ROOT / "rl_service"
FORBIDDEN = {"ray", "vllm"}
ROOTS = ["rl_service/types.py", "rl_service/learner/batching.py"]


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def module_file(name: str) -> Path | None:
    """rl_service.a.b -> rl_service/a/b.py or rl_service/a/b/__init__.py, if it exists."""
    base = ROOT.joinpath(*name.split("."))
    for cand in (base.with_suffix(".py"), base / "__init__.py"):
        if cand.is_file():
            return cand
    return None


def imported_modules(path: Path) -> set[str]:
    """Absolute names of every module `path` imports (relative imports resolved)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_pkg = path.name == "__init__.py"
    package = module_name(path) if is_pkg else module_name(path).rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - (node.level - 1)])
                mod = f"{base}.{node.module}" if node.module else base
            else:
                mod = node.module or ""
            names.add(mod)
            # `from pkg import sub` may name a submodule: follow it if it is one
            names.update(f"{mod}.{alias.name}" for alias in node.names if alias.name != "*")
    return names


def rl_service_files(name: str) -> list[Path]:
    """Files Python executes for `import name`: every package __init__ on the way, then the module."""
    parts = name.split(".")
    files = []
    for i in range(1, len(parts) + 1):
        f = module_file(".".join(parts[:i]))
        if f is not None:
            files.append(f)
    return files


def forbidden_chains(start: Path, forbidden: set[str]) -> list[str]:
    """Every 'a.py -> b.py -> ray' chain from `start` reaching a module whose top level is forbidden."""
    found, seen = [], {start}
    stack = [(start, [str(start.relative_to(ROOT))])]
    while stack:
        path, chain = stack.pop()
        for mod in sorted(imported_modules(path)):
            top = mod.split(".")[0]
            if top in forbidden:
                found.append(" -> ".join(chain + [mod]))
            elif top == "rl_service":
                for f in rl_service_files(mod):
                    if f not in seen:
                        seen.add(f)
                        stack.append((f, chain + [str(f.relative_to(ROOT))]))
    return found


def algo_files() -> list[Path]:
    return sorted((PKG / "algo").glob("*.py"))


def test_algo_package_exists():
    assert algo_files(), "rl_service/algo/*.py: none found; the layering check would check nothing"


def env_files() -> list[Path]:
    """rl_service/envs/ is pure python too: environments run inside any worker."""
    return sorted((PKG / "envs").glob("*.py"))


def config_files() -> list[Path]:
    """rl_service/config/ must load and validate before Ray starts."""
    return sorted((PKG / "config").glob("*.py"))


@pytest.mark.parametrize("rel", [str(p.relative_to(ROOT)) for p in algo_files() + env_files() + config_files()] + ROOTS)
def test_no_ray_or_vllm_reachable(rel):
    path = ROOT / rel
    if not path.is_file():
        pytest.skip(f"{rel} not written yet")
    chains = forbidden_chains(path, FORBIDDEN)
    assert not chains, "forbidden import reached:\n  " + "\n  ".join(chains)


def test_algo_imports_only_torch_stdlib_and_algo():
    """algo/ is pure math: torch + stdlib, and within rl_service only algo itself."""
    allowed = set(sys.stdlib_module_names) | {"torch", "__future__"}
    bad = []
    for path in algo_files():
        for mod in imported_modules(path):
            top = mod.split(".")[0]
            if top == "rl_service":
                if not (mod == "rl_service.algo" or mod.startswith("rl_service.algo.")):
                    bad.append(f"{path.name}: {mod}")
            elif top not in allowed:
                bad.append(f"{path.name}: {mod}")
    assert not bad, "algo/ may import only torch, the stdlib and rl_service.algo:\n  " + "\n  ".join(bad)


def test_walker_catches_indirect_imports(tmp_path, monkeypatch):
    """The checker itself: an import of ray two rl_service hops away, inside a function, is found."""
    fake = tmp_path / "rl_service"
    (fake / "sub").mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "sub" / "__init__.py").write_text("")
    (fake / "a.py").write_text("from rl_service.sub import b\n")
    (fake / "sub" / "b.py").write_text("from . import c\n")
    (fake / "sub" / "c.py").write_text("def f():\n    import vllm.engine\n")
    (fake / "clean.py").write_text("import torch\nfrom rl_service import missing_module\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    chains = forbidden_chains(fake / "a.py", FORBIDDEN)
    assert chains == ["rl_service/a.py -> rl_service/sub/b.py -> rl_service/sub/c.py -> vllm.engine"]
    assert forbidden_chains(fake / "clean.py", FORBIDDEN) == []


# Layering rule 2: actor and endpoint bodies are plain classes; Ray is applied at wiring time,
# in one module.
WIRING = "rl_service/infra/placement.py"
RAY_APPLIERS = {("ray", "remote"), ("serve", "deployment"), ("serve", "ingress")}


def ray_applications(path: Path) -> list[str]:
    """Every `ray.remote` / `serve.deployment` / `serve.ingress` use in `path` (call or decorator),
    also through `from ray import remote` style names, as 'file:line name'."""
    tree = ast.parse(path.read_text(), filename=str(path))
    aliases = {}  # local name -> (module, attr) for `from ray import remote as r`
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module in ("ray", "ray.serve"):
            mod = "ray" if node.module == "ray" else "serve"
            for a in node.names:
                if (mod, a.name) in RAY_APPLIERS:
                    aliases[a.asname or a.name] = (mod, a.name)
    found = []
    for node in ast.walk(tree):
        hit = None
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            if (node.value.id, node.attr) in RAY_APPLIERS:
                hit = f"{node.value.id}.{node.attr}"
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load) and node.id in aliases:
            hit = ".".join(aliases[node.id])
        if hit:
            found.append(f"{path.relative_to(ROOT)}:{node.lineno} {hit}")
    return found


def test_ray_is_applied_only_in_the_wiring_module():
    bad = [hit for f in sorted(PKG.rglob("*.py")) if str(f.relative_to(ROOT)) != WIRING for hit in ray_applications(f)]
    assert not bad, f"ray.remote / serve.deployment / serve.ingress outside {WIRING}:\n  " + "\n  ".join(bad)
    assert ray_applications(ROOT / WIRING), f"{WIRING} applies no ray.remote: the check would check nothing"


def test_ray_application_finder_itself(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    f = tmp_path / "m.py"
    f.write_text(
        "import ray\nfrom ray import serve\nfrom ray import remote as rr\n"
        "@serve.deployment\nclass A: ...\n"
        "B = ray.remote(object)\nC = rr(object)\nray.get([])\n"
    )
    assert ray_applications(f) == ["m.py:4 serve.deployment", "m.py:6 ray.remote", "m.py:7 ray.remote"]


def test_folders_say_the_responsibility():
    """Nothing loose at rl_service/ but __init__.py and types.py; no module past 400 lines."""
    loose = sorted(p.name for p in PKG.glob("*.py") if p.name not in ("__init__.py", "types.py"))
    assert not loose, f"modules loose at rl_service/ top level: {loose}"
    long = {str(p.relative_to(ROOT)): n for p in PKG.rglob("*.py") if (n := len(p.read_text().splitlines())) > 400}
    assert not long, f"files over 400 lines (split by responsibility): {long}"
