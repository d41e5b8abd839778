"""The exponential plans of the CPU kernel (``backends._exp_plan``): every requested ``exp(u/T)`` is an
entry, every product entry is exactly the product of its factors (``1/T = 1/T_a + 1/T_b`` in exact
rational arithmetic), powers stay within the bound, and following a plan in float64 reproduces
``exp(u/T)`` computed directly."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backends._exp_plan import exp_plan

OFFICIAL = (1.0, 2.0, 3.0, 4.0, 5.0, 6.0)


def check_plan(temperatures, max_power):
    plan = exp_plan(temperatures, max_power)
    entries = plan.entry_temperature
    assert len(plan.factors) == len(entries) == len(plan.power)
    assert plan.factors[0] is None  # the kernel computes entry 0 with exp (it carries the argmax)
    for j, factor in enumerate(plan.factors):
        assert 1 <= plan.power[j] <= max_power
        if factor is None:
            assert plan.power[j] == 1
            continue
        a, b = factor
        assert a < j and b < j  # factors are computed first
        inverse = [1 / Fraction(entries[i]) for i in (j, a, b)]
        assert inverse[0] == inverse[1] + inverse[2]
        assert plan.power[j] == plan.power[a] + plan.power[b]
    assert [entries[j] for j in plan.temperature_entry] == [float(t) for t in temperatures]
    return plan


def follow(plan, u):
    """The entries of ``plan`` for the float64 values ``u``, computed as the kernel does."""
    values = []
    for j, factor in enumerate(plan.factors):
        if factor is None:
            values.append(np.exp(u * (1.0 / plan.entry_temperature[j])))
        else:
            values.append(values[factor[0]] * values[factor[1]])
    return values


def test_official_temperatures_need_two_exponentials():
    plan = check_plan(OFFICIAL, 12)
    assert plan.num_roots == 2
    assert sorted(t for j, t in enumerate(plan.entry_temperature) if plan.factors[j] is None) == [5.0, 12.0]
    assert max(plan.power) == 12
    assert len(plan.entry_temperature) == 7  # one auxiliary entry (T = 12) besides the six


@pytest.mark.parametrize("max_power, roots", [(1, 6), (2, 4), (4, 3), (12, 2)])
def test_the_bound_trades_exponentials_for_products(max_power, roots):
    plan = check_plan(OFFICIAL, max_power)
    assert plan.num_roots == roots
    assert max(plan.power) <= max_power


@pytest.mark.parametrize("temperatures", [(1.0,), (2.0, 2.0, 1.0), (0.5, 2.0, 4.0, 3.0, 1.0), (0.3, 1.0),
                                          (7.0, 1.0), (2.5, 5.0, 1.0)])
def test_odd_sets(temperatures):
    plan = check_plan(temperatures, 12)
    u = -np.linspace(0.0, 40.0, 101)
    values = follow(plan, u)
    for k, temp in enumerate(temperatures):
        np.testing.assert_allclose(values[plan.temperature_entry[k]], np.exp(u / temp), rtol=1e-14, atol=0)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from([0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 0.3, 7.0]),
                min_size=1, max_size=7),
       st.integers(min_value=1, max_value=12))
def test_any_set_is_a_valid_plan_that_reproduces_exp(temperatures, max_power):
    plan = check_plan(tuple(temperatures), max_power)
    assert plan.num_roots <= len(set(temperatures))
    u = -np.linspace(0.0, 30.0, 61)
    values = follow(plan, u)
    for k, temp in enumerate(temperatures):
        # a power-n entry carries ~n roundings of the root: float64 stays far inside 1e-13
        np.testing.assert_allclose(values[plan.temperature_entry[k]], np.exp(u / temp), rtol=1e-13, atol=0)


def test_bad_bound_is_refused():
    with pytest.raises(ValueError, match="max_power must be >= 1"):
        exp_plan(OFFICIAL, 0)
