"""The points of a sweep: the cross product of `--grid` values, times `--samples` seeds.

    points = grid_points(["learner.lr=3e-5,1e-4", "learner.advantage=grpo,rloo"], samples=1)
    # [{"learner.lr": "3e-5", "learner.advantage": "grpo"}, {... "rloo"}, {"learner.lr": "1e-4", ...}, ...]

Values stay the strings the user typed (they become `KEY=VALUE` overrides, parsed as any
override is); a point's index is its trial's stable name (`trial-000`), so a restored sweep
finds each unfinished trial's run directory again.
"""

from __future__ import annotations

import itertools

from rl_service.config import ConfigError, load_config


def parse_grid(spec: str) -> tuple[str, list[str]]:
    """`KEY=V1,V2[,...]` -> (KEY, [V1, V2, ...]); ConfigError on a malformed one."""
    key, sep, values = spec.partition("=")
    key = key.strip()
    parts = [v.strip() for v in values.split(",")] if sep else []
    if not key or not parts or any(not v for v in parts):
        raise ConfigError(f"--grid {spec!r}: expected KEY=V1,V2[,...] with non-empty values")
    if len(set(parts)) != len(parts):
        raise ConfigError(f"--grid {spec!r}: a value is listed twice")
    return key, parts


def grid_points(specs: list[str], samples: int = 1, base_seed: int = 0) -> list[dict[str, str]]:
    """Every combination of the grids' values (first grid slowest), each repeated with
    `samples` seeds (base_seed, base_seed + 1, ...; the `seed` key only when samples > 1)."""
    grids = [parse_grid(s) for s in specs]
    keys = [k for k, _ in grids]
    if len(set(keys)) != len(keys):
        raise ConfigError(f"--grid: a key is swept twice ({keys})")
    if samples > 1 and "seed" in keys:
        raise ConfigError("--samples N sweeps the seed itself: drop --grid seed=... or use --samples 1")
    combos = [dict(zip(keys, values)) for values in itertools.product(*(v for _, v in grids))]
    if samples > 1:
        combos = [{**c, "seed": str(base_seed + s)} for c in combos for s in range(samples)]
    return combos


def overrides_of(point: dict[str, str]) -> list[str]:
    return [f"{k}={v}" for k, v in point.items()]


def check_points(config: str, base_overrides: list[str], points: list[dict[str, str]]) -> list:
    """Every trial's Config, validated before Ray starts (ConfigError naming the point)."""
    out = []
    for i, point in enumerate(points):
        try:
            out.append(load_config(config, base_overrides + overrides_of(point)))
        except ConfigError as err:
            raise ConfigError(f"trial {i} ({' '.join(overrides_of(point))}): {err}") from None
    return out
