"""`methods/_common/keptfactor.py`: the guard's factor kept across key additions and removals
equals the factor computed from scratch over the live keys."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lifelong.methods._common.guard import BLOCK, Guard
from lifelong.methods._common.keptfactor import KeptFactor
from lifelong.methods._common.keytable import KeyTable

DIM = 4
point = st.lists(st.integers(-3, 3), min_size=DIM, max_size=DIM)
# ("add", key) or ("remove", which of the live keys); keys on a small integer grid: identical
# keys and keys equal to a pool key (distance 0) are frequent
step = st.one_of(st.tuples(st.just("add"), point), st.tuples(st.just("remove"), st.integers(0, 99)))


def from_scratch(guard: Guard, table: KeyTable, key_radius: float, rate: float) -> float:
    ids = sorted(table.norm)
    keys = torch.from_numpy(table.index.get(ids)) if ids else torch.zeros((0, DIM))
    radii = key_radius * torch.tensor([table.norm[i] for i in ids])
    return guard.factor(keys, radii, rate, chunk=1)  # key by key, as the kept factor measures


@settings(max_examples=60, deadline=None)
@given(pool=st.lists(point, min_size=1, max_size=10), steps=st.lists(step, max_size=40),
       rate=st.sampled_from([0.0, 0.2, 0.5]), key_radius=st.sampled_from([0.5, 1.0, 3.0]),
       every=st.integers(1, 5), many=st.booleans())
def test_kept_factor_is_the_factor_from_scratch(pool, steps, rate, key_radius, every, many):
    """Whatever keys come and go (identical keys, keys equal to a pool key, every key
    removed), asked after every `every` changes: the kept factor is `Guard.factor` over the
    live keys. `many` pads the table past a block so changes land in several blocks."""
    guard = Guard(torch.tensor(pool, dtype=torch.float32))
    table, kept = KeyTable(DIM), KeptFactor(guard)
    if many:
        for i in range(BLOCK + 3):
            table.add(np.full((1, DIM), 10.0 + i, dtype=np.float32), 0, f"pad{i}")
    for n, (what, arg) in enumerate(steps):
        if what == "add":
            table.add(np.array([arg], dtype=np.float32), 0, f"e{n}")
        elif len(table):
            ids = sorted(table.norm)
            table.remove([ids[arg % len(ids)]])
        if n % every == 0:
            assert kept.factor(table, key_radius, rate) == from_scratch(guard, table, key_radius, rate)
    assert kept.factor(table, key_radius, rate) == from_scratch(guard, table, key_radius, rate)
