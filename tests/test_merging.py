"""Merging algorithms: TIES is order-independent, matches hand-worked examples; linear/DARE."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lifelong.merging import dare, linear, merge, ties, trim

shapes = st.tuples(st.integers(1, 5), st.integers(1, 6))


@st.composite
def delta_sets(draw):
    shape = draw(shapes)
    n = draw(st.integers(1, 5))
    seed = draw(st.integers(0, 2 ** 16))
    g = torch.Generator().manual_seed(seed)
    deltas = [torch.randn(shape, generator=g) * (torch.rand(shape, generator=g) > 0.3) for _ in range(n)]
    weights = draw(st.lists(st.floats(0.1, 5.0), min_size=n, max_size=n))
    perm = draw(st.permutations(list(range(n))))
    return deltas, weights, perm


@settings(max_examples=60, deadline=None)
@given(delta_sets(), st.sampled_from([0.2, 0.5, 1.0]))
def test_ties_is_invariant_to_the_order_of_the_shards(case, density):
    deltas, weights, perm = case
    a = ties(deltas, density, weights)
    b = ties([deltas[i] for i in perm], density, [weights[i] for i in perm])
    assert torch.equal(a, b)


@settings(max_examples=40, deadline=None)
@given(delta_sets())
def test_ties_entries_come_from_agreeing_deltas(case):
    """Every merged entry lies between the min and max of the trimmed deltas agreeing with its
    sign (a disjoint mean), and is zero where every trimmed delta is zero."""
    deltas, weights, _ = case
    out = ties(deltas, 1.0, weights)
    stack = torch.stack(deltas)
    assert torch.all(out[(stack == 0).all(0)] == 0)
    lo, hi = stack.min(0).values, stack.max(0).values
    assert torch.all(out >= lo - 1e-6) and torch.all(out <= hi + 1e-6)


def test_ties_hand_example():
    a = torch.tensor([1.0, -2.0, 0.0, 3.0])
    b = torch.tensor([3.0, 1.0, -0.5, -0.25])
    # density 1: signs of sums: [+, -, -, +]; disjoint means: [2, -2, -0.5, 3]
    assert torch.equal(ties([a, b], 1.0), torch.tensor([2.0, -2.0, -0.5, 3.0]))
    # density 0.5 keeps the two largest magnitudes of each: a -> [0,-2,0,3], b -> [3,1,0,0]
    assert torch.equal(ties([a, b], 0.5), torch.tensor([3.0, -2.0, 0.0, 3.0]))


def test_one_delta_at_full_density_is_itself():
    d = torch.randn(4, 5)
    assert torch.equal(ties([d], 1.0), d)
    assert torch.equal(merge("linear", [d]), d)


def test_weights_shift_the_disjoint_mean():
    a, b = torch.tensor([1.0]), torch.tensor([3.0])
    assert torch.allclose(ties([a, b], 1.0, [3.0, 1.0]), torch.tensor([1.5]))


def test_trim_keeps_the_top_fraction():
    d = torch.tensor([0.1, -5.0, 2.0, 0.3])
    assert torch.equal(trim(d, 0.5), torch.tensor([0.0, -5.0, 2.0, 0.0]))


def test_linear_and_dare():
    a, b = torch.ones(100), 2 * torch.ones(100)
    assert torch.equal(linear([a, b]), 3 * torch.ones(100))
    assert torch.equal(linear([a, b], normalize=True), 1.5 * torch.ones(100))
    assert torch.equal(dare([a, b], drop=0.0), linear([a, b]))
    dropped = dare([a], drop=0.5, seed=1)
    assert set(dropped.unique().tolist()) <= {0.0, 2.0}
    assert torch.equal(dropped, dare([a], drop=0.5, seed=1))


def test_bad_input():
    with pytest.raises(ValueError):
        ties([], 0.5)
    with pytest.raises(ValueError):
        ties([torch.ones(2), torch.ones(3)], 0.5)
    with pytest.raises(ValueError):
        merge("mean", [torch.ones(2)])
