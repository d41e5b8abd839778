r"""Which ``exp(u/T)`` the CPU kernel computes with ``exp`` and which it derives by multiplying: an
*exponential plan* for a set of temperatures.

``exp(u/T) = exp(u/R)**n`` whenever ``R = n T``: one exponential at a *root* ``R`` gives every
temperature that divides it ``n <= max_power`` times, each by a short chain of products of earlier
entries. For the official ``(1, ..., 6)`` and ``max_power = 12`` the roots are 12 (an auxiliary entry,
no loss term) and 5, and the rest are products: ``T6 = b*b``, ``T4 = T6*b``, ``T3 = T6*T6``,
``T2 = T4*T3`` ... (``b = exp(u/12)``), two exponentials per element instead of six.

Rounding: a power ``n`` multiplies the relative error of the root's ``exp`` by about ``n`` (plus one
rounding per product); ``max_power`` bounds it. ``benchmarks/RESULTS.md`` has the errors measured
against float64 for the powers used; ``tests/test_exp_plan.py`` checks the plans.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from fractions import Fraction

__all__ = ["ExpPlan", "exp_plan"]


@dataclass(frozen=True)
class ExpPlan:
    """Entries in evaluation order (every product's factors come earlier).

    ``entry_temperature[j]`` is the ``T`` with ``entry j = exp(u / T)``; ``factors[j]`` is ``None`` for
    a root (computed with ``exp``) and ``(a, b)`` for ``entry a * entry b``; ``power[j]`` is ``n`` in
    ``exp(u/R)**n``. ``temperature_entry[k]`` is the entry holding the ``k``-th requested temperature.
    """

    entry_temperature: tuple[float, ...]
    factors: tuple[tuple[int, int] | None, ...]
    power: tuple[int, ...]
    temperature_entry: tuple[int, ...]

    @property
    def num_roots(self) -> int:
        return sum(f is None for f in self.factors)


def _cover(root: Fraction, temp: Fraction, max_power: int) -> int | None:
    """``n`` with ``root = n * temp`` and ``1 <= n <= max_power``, else None."""
    ratio = root / temp
    if ratio.denominator == 1 and 1 <= ratio.numerator <= max_power:
        return ratio.numerator
    return None


# Relative cost of a root (one polynomial exp, ~16 vector ops) against a product entry (one multiply
# plus the sums every entry needs), per element; decides between plans of different max powers.
ROOT_COST = 3.5


def _roots(temps: list[Fraction], max_power: int) -> list[Fraction]:
    """Greedy cover: the root covering the most temperatures first (ties: smaller largest power, then
    smaller root)."""
    uncovered = set(temps)
    roots: list[Fraction] = []
    while uncovered:
        left = frozenset(uncovered)

        def score(root: Fraction, left: frozenset[Fraction] = left) -> tuple[int, int, Fraction]:
            powers = [p for p in (_cover(root, temp, max_power) for temp in left) if p is not None]
            return -len(powers), max(powers), root

        best = min({temp * n for temp in left for n in range(1, max_power + 1)}, key=score)
        roots.append(best)
        uncovered -= {temp for temp in uncovered if _cover(best, temp, max_power) is not None}
    return roots


def _chain(n: int, have: set[int]) -> list[tuple[int, int, int]]:
    """Products ``(power, power_a, power_b)`` that add power ``n`` of a root to the powers ``have``
    already made from it (squaring where possible, else two known powers), in evaluation order."""
    made = set(have)
    steps: list[tuple[int, int, int]] = []

    def go(m: int) -> None:
        if m in made:
            return
        if m % 2 == 0:
            go(m // 2)
            pair = m // 2
        else:
            pair = max((p for p in made if p < m and m - p in made), default=None)
            if pair is None:
                go(m - 1)
                pair = m - 1
        steps.append((m, pair, m - pair))
        made.add(m)

    go(n)
    return steps


Entry = tuple[Fraction, "tuple[int, int] | None", int]  # temperature, factor entries, power of its root


def _build(temps: list[Fraction], max_power: int) -> tuple[list[Entry], dict[Fraction, int], float]:
    """Entries for ``temps`` with the greedy roots, each temperature added by the root and chain that
    need the fewest new entries (cheapest first); the entry of each temperature; the plan's cost.
    Products only multiply entries of one root, so an entry's power bounds its rounding."""
    roots = _roots(temps, max_power)
    entries: list[Entry] = []
    chains: dict[Fraction, dict[int, int]] = {}  # root -> power -> entry
    entry_of: dict[Fraction, int] = {}
    for root in roots:
        chains[root] = {1: len(entries)}
        entry_of.setdefault(root, len(entries))
        entries.append((root, None, 1))
    pending = set(temps) - set(entry_of)
    while pending:
        options = [(len(steps), n, temp, root, steps) for temp in sorted(pending) for root in roots
                   if (n := _cover(root, temp, max_power)) is not None
                   for steps in [_chain(n, set(chains[root]))]]
        _, _, temp, root, steps = min(options, key=lambda o: o[:3])
        chain = chains[root]
        for power, power_a, power_b in steps:
            chain[power] = len(entries)
            entry_of.setdefault(root / power, len(entries))
            entries.append((root / power, (chain[power_a], chain[power_b]), power))
        pending -= set(entry_of)
    return entries, entry_of, ROOT_COST * len(roots) + len(entries) - len(roots)


@functools.lru_cache(maxsize=64)
def exp_plan(temperatures: tuple[float, ...], max_power: int) -> ExpPlan:
    """The cheapest :class:`ExpPlan` of ``temperatures`` (positive floats, duplicates allowed) whose
    derived entries are powers ``<= max_power`` of their root (``max_power = 1``: every temperature
    by ``exp``).

    For each bound ``p <= max_power``: roots chosen greedily (the root covering the most temperatures
    first), then every temperature added by the root needing the fewest new products. The plan of
    least cost (:data:`ROOT_COST` per root, 1 per product) wins; ties go to the smaller power. Exact
    rational arithmetic decides ``R = n T``, so no plan relies on a rounded relation.

    Examples
    --------
    >>> plan = exp_plan((1.0, 2.0, 3.0, 4.0, 5.0, 6.0), 12)
    >>> plan.num_roots, [plan.entry_temperature[j] for j in plan.temperature_entry]
    (2, [1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    >>> exp_plan((1.0, 2.0, 3.0, 4.0, 5.0, 6.0), 4).num_roots
    3
    """
    if max_power < 1:
        raise ValueError(f"max_power must be >= 1; got {max_power}")
    exact = [Fraction(t) for t in temperatures]
    distinct = sorted(set(exact))
    plans = [_build(distinct, p) for p in range(1, max_power + 1)]
    entries, entry_of, _ = min(plans, key=lambda plan: plan[2])  # the first of equal cost: smaller power
    return ExpPlan(
        entry_temperature=tuple(float(temp) for temp, _, _ in entries),
        factors=tuple(factors for _, factors, _ in entries),
        power=tuple(power for _, _, power in entries),
        temperature_entry=tuple(entry_of[t] for t in exact),
    )
