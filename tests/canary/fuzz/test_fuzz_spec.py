"""Fuzz the spec loader: any mutation of a shipped spec is accepted or refused with a SpecError naming the field."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml
from fuzz_inputs import FUZZ, FUZZ_FEW, GARBAGE, mutated
from hypothesis import given
from hypothesis import strategies as st

from canary.errors import SpecError
from canary.spec.model import RolloutSpec, load_spec, parse_spec

SPECS_DIR = Path(__file__).resolve().parents[3] / "include" / "rollouts"
SHIPPED = {path.stem: yaml.safe_load(path.read_text()) for path in sorted(SPECS_DIR.glob("*.yaml"))}


def check_spec_contract(data: object) -> None:
    """Accept, or raise SpecError whose every problem names a field (a location) and says what is allowed."""
    try:
        spec = parse_spec(data, source="fuzz.yaml")
    except SpecError as err:
        assert err.problems, "a SpecError lists its problems"
        for loc, msg in err.problems:
            assert isinstance(loc, str) and isinstance(msg, str) and msg.strip(), err.problems
            if isinstance(data, dict):
                assert loc, f"problem without a field location: {msg!r}"
        assert str(err).startswith("fuzz.yaml: ")
        return
    assert isinstance(spec, RolloutSpec)
    # A run's plan carries the spec as JSON (XCom) and parses it back: an accepted spec survives that unchanged.
    assert parse_spec(spec.model_dump(mode="json", by_alias=True), source="round trip") == spec


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_specs_parse(name):
    parse_spec(SHIPPED[name], source=name)


@pytest.mark.parametrize("name", sorted(SHIPPED))
@FUZZ
@given(data=st.data())
def test_mutated_spec_is_accepted_or_refused_naming_the_field(name, data):
    check_spec_contract(data.draw(mutated(SHIPPED[name])))


@FUZZ
@given(data=GARBAGE)
def test_arbitrary_data_is_refused_as_a_spec_error(data):
    check_spec_contract(data)


@FUZZ_FEW
@given(raw=st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
def test_arbitrary_bytes_in_a_spec_file_are_a_spec_error(tmp_path_factory, raw):
    path = tmp_path_factory.mktemp("spec") / "fuzz.yaml"
    path.write_bytes(raw)
    try:
        load_spec(path)
    except SpecError as err:
        assert err.problems and str(err).startswith(str(path))


def _billion_laughs(levels: int, fanout: int) -> str:
    """Return a mapping whose anchors each repeat the previous one ``fanout`` times (``fanout**levels`` values)."""
    lines = ['a0: &a0 "lol"']
    for i in range(1, levels):
        refs = ", ".join(f"*a{i - 1}" for _ in range(fanout))
        lines.append(f"a{i}: &a{i} [{refs}]")
    return "".join(f"      {line}\n" for line in lines)


@pytest.mark.parametrize("levels, fanout", [(9, 10), (30, 2), (6, 40)])
def test_yaml_alias_bomb_is_refused_quickly(tmp_path, levels, fanout):
    """A billion-laughs document under options (``dict[str, Any]``: nothing validates it) is refused unexpanded.

    Before the fix, (9, 10) took 30 s and a SpecError message of hundreds of megabytes (the expansion's repr).
    """
    path = tmp_path / "bomb.yaml"
    path.write_text("model: bomb\nendpoint: bomb\nstages: [{weight: 100}]\nshadow: {enabled: false}\n"
                    "backends:\n  metrics:\n    name: local\n    options:\n      x:\n" + _billion_laughs(levels, fanout))
    started = time.monotonic()
    with pytest.raises(SpecError) as err:
        load_spec(path)
    assert time.monotonic() - started < 5.0
    [(loc, msg)] = err.value.problems
    assert loc == "" and "aliases" in msg and len(str(err.value)) < 1000


def test_recursive_alias_is_refused(tmp_path):
    path = tmp_path / "cycle.yaml"
    path.write_text("model: cycle\nendpoint: cycle\nstages: [{weight: 100}]\ntags: &t [*t]\n")
    with pytest.raises(SpecError, match="contains itself"):
        load_spec(path)


def test_a_few_aliases_still_load(tmp_path):
    path = tmp_path / "anchors.yaml"
    path.write_text("model: anchors\nendpoint: anchors\nstages:\n  - &stage {weight: 50, min_requests: 10}\n"
                    "  - {<<: *stage, weight: 100}\n")
    assert [s.weight for s in load_spec(path).stages] == [50, 100]


def test_huge_spec_file_is_refused(tmp_path):
    path = tmp_path / "huge.yaml"
    path.write_text("model: huge\nendpoint: huge\nstages: [{weight: 100}]\ndescription: '" + "x" * 2_000_000 + "'\n")
    with pytest.raises(SpecError, match="bytes"):
        load_spec(path)


def test_deeply_nested_yaml_is_a_spec_error(tmp_path):
    path = tmp_path / "deep.yaml"
    path.write_text("model: deep\nendpoint: deep\nstages: [{weight: 100}]\ndescription: " + "[" * 5000 + "]" * 5000)
    with pytest.raises(SpecError, match="nested too deeply"):
        load_spec(path)
