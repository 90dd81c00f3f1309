"""Resource amounts as Ray counts them: what a task demands, what a node offers.

A demand is a mapping of resource name to amount: `CPU`, `GPU`, `memory` (bytes) and any
custom name. Amounts are kept in units of 1/10000, as Ray does, so fractions add up exactly
(ten tasks of 0.1 CPU fit one CPU). A demand's *shape* is its canonical text
(`CPU=1,GPU=0.5`): tasks of one shape queue together, so a node claims only the shapes that
fit what it has free (docs/design.md, "Resources").
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

UNIT = 10_000                  # amounts are stored as integers of 1/UNIT (memory: bytes)


def to_units(amount: float, name: str = "") -> int:
    if name == "memory":
        return int(amount)
    return int(round(amount * UNIT))


def from_units(units: int, name: str = "") -> float:
    if name == "memory":
        return units
    value = units / UNIT
    return int(value) if value == int(value) else value


def check_amount(name: str, value: Any, *, whole_above_one: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a number >= 0, got {value!r}")
    if whole_above_one and value > 1 and value != int(value):
        raise ValueError(f"{name} greater than 1 must be a whole number, got {value!r}")
    if value and to_units(value) == 0:
        raise ValueError(f"{name} is below the smallest amount 1/{UNIT}, got {value!r}")
    return float(value)


def check_custom(resources: Any) -> dict[str, float]:
    if not isinstance(resources, Mapping):
        raise ValueError(f"resources must be a dict of name to amount, got {resources!r}")
    out = {}
    for name, amount in resources.items():
        if name in ("CPU", "GPU"):
            raise ValueError(f"Use the 'num_cpus' and 'num_gpus' keyword instead of {name!r} "
                             "in 'resources' keyword")
        if name == "memory":
            raise ValueError("Use the 'memory' keyword instead of 'memory' in 'resources'")
        if not isinstance(name, str) or not name or any(
                c.isspace() or c in ",=*?[]{}" or not c.isprintable() for c in name):
            raise ValueError(f"a resource name must be a non-empty string without spaces, "
                             f"commas or '=', got {name!r}")
        out[name] = check_amount(f"resources[{name!r}]", amount)
    return out


def demand(num_cpus: float, num_gpus: float, memory: float,
           custom: Mapping[str, float]) -> dict[str, int]:
    """A task's demand in units, zero amounts left out."""
    amounts = {"CPU": to_units(num_cpus), "GPU": to_units(num_gpus),
               "memory": int(memory), **{k: to_units(v) for k, v in custom.items()}}
    return {k: v for k, v in amounts.items() if v}


NO_DEMAND = "none"     # the shape of a task that needs nothing (num_cpus=0)
# In a node's free hash, beside its resources: a claim found no room there (claim.lua). Has
# an '=', which no resource name may have: a custom resource named "blocked" was clobbered.
BLOCKED_FLAG = "=blocked"


def shape_of(units: Mapping[str, int]) -> str:
    """Canonical text of a demand: `CPU=1,GPU=0.5` (names sorted)."""
    return ",".join(f"{k}={from_units(v, k)!r}" for k, v in sorted(units.items())) or NO_DEMAND


def parse_shape(shape: str) -> dict[str, int]:
    out: dict[str, int] = {}
    if shape == NO_DEMAND:
        return out
    for part in filter(None, shape.split(",")):
        name, _, amount = part.partition("=")
        out[name] = to_units(float(amount), name)
    return out


def fits(need: Mapping[str, int], free: Mapping[str, int]) -> bool:
    return all(free.get(k, 0) >= v for k, v in need.items())


def missing(need: Mapping[str, int], total: Mapping[str, int]) -> dict[str, float]:
    """What a node of `total` lacks for `need` (empty: it fits an idle node)."""
    return {k: from_units(v - total.get(k, 0), k) for k, v in need.items()
            if total.get(k, 0) < v}


def as_amounts(units: Mapping[str, int]) -> dict[str, float]:
    """Units back to Ray's numbers (memory in bytes)."""
    return {k: from_units(v, k) for k, v in units.items()}
