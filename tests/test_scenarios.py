"""Every shipped scenario loads, names streams that exist and validate, and methods that are
registered with settings they accept."""

from __future__ import annotations

from pathlib import Path

import pytest

from lifelong.config import from_mapping
from lifelong.methods import get_method
from lifelong.scenario import load_scenario
from lifelong.stream import parse_stream

SCENARIOS = sorted((Path(__file__).resolve().parent.parent / "scenarios").rglob("*.toml"))


@pytest.mark.parametrize("path", SCENARIOS, ids=[p.stem for p in SCENARIOS])
def test_shipped_scenario_is_runnable(path):
    sc = load_scenario(path)
    assert Path(sc.stream.file).exists()
    assert parse_stream(sc.stream.file).events
    for spec in sc.methods:
        from_mapping(get_method(spec.name).Config, spec.settings or {}, spec.display)
