"""Hypothesis strategies shared by the fuzz tests: garbage values and structure-aware mutations of valid input."""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st

#: Every fuzz test: deterministic (the same examples on every run, so CI never flakes), no per-example deadline
#: (the first example pays for imports), a modest number of examples so that the whole set stays under a minute.
FUZZ = settings(derandomize=True, deadline=None, max_examples=200, database=None)
FUZZ_FEW = settings(FUZZ, max_examples=60)

EXTREME_FLOATS = st.sampled_from([float("nan"), float("inf"), float("-inf"), -0.0, 1e308, -1e308, 5e-324])
EXTREME_INTS = st.sampled_from([0, -1, 2**31, 2**63, -(2**63), 10**30, 10**400])
NUMBERS = st.one_of(st.integers(), st.floats(allow_nan=True, allow_infinity=True), EXTREME_FLOATS, EXTREME_INTS)
TEXT = st.one_of(st.text(max_size=20), st.sampled_from(["", " ", "NaN", "inf", "-1", "1e400", "10m", "0", "true",
                                                        "null", "\x00", "é☃𝔘", "a" * 300, "[]", "{}", "1h30m"]))
SCALARS = st.one_of(st.none(), st.booleans(), NUMBERS, TEXT)
#: Any JSON/YAML-shaped value: scalars, lists and mappings of them, a few levels deep.
GARBAGE = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                         st.dictionaries(TEXT, inner, max_size=4)), max_leaves=12)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Return the path of every node under ``value`` (mapping keys and list indexes)."""
    out = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            out += _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            out += _paths(item, (*prefix, i))
    return out


def _apply(doc: Any, path: tuple[Any, ...], op: str, value: Any) -> Any:
    if not path:
        return value if op == "set" else doc
    parent = doc
    for part in path[:-1]:
        parent = parent[part]
    last = path[-1]
    if op == "delete":
        del parent[last]
    elif op == "set":
        parent[last] = value
    elif op == "add_key" and isinstance(parent[last], dict):
        parent[last][str(value)[:20]] = value
    elif op == "repeat" and isinstance(parent[last], list):
        parent[last] = parent[last] * 50  # huge lists
    elif op == "wrap":
        parent[last] = [parent[last]]
    return doc


@st.composite
def mutated(draw: st.DrawFn, base: Any, *, max_mutations: int = 4) -> Any:
    """Return a deep copy of ``base`` with a few mutations: keys dropped, values replaced by garbage or extremes,
    unknown keys added, lists repeated, values wrapped in lists."""
    doc = copy.deepcopy(base)
    for _ in range(draw(st.integers(1, max_mutations))):
        paths = _paths(doc)
        path = draw(st.sampled_from(paths))
        op = draw(st.sampled_from(["delete", "set", "set", "set", "add_key", "repeat", "wrap"]))
        if op == "delete" and not path:
            continue
        doc = _apply(doc, path, op, draw(GARBAGE))
    return doc
