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


def _chain(root: Fraction, n: int, known: set[Fraction]) -> list[tuple[Fraction, Fraction, Fraction, int]]:
    """Products ``(temp, factor_a, factor_b, power)`` that add ``exp(u/root)**n`` to the entries
    ``known`` (temperatures), squaring where possible, else multiplying two known powers."""
    have = set(known)
    steps: list[tuple[Fraction, Fraction, Fraction, int]] = []

    def go(m: int) -> None:
        temp = root / m
        if temp in have:
            return
        if m % 2 == 0:
            go(m // 2)
            pair = m // 2
        else:
            powers = {p for p in range(1, m) if root / p in have}
            pair = max((p for p in powers if m - p in powers), default=None)
            if pair is None:
                go(m - 1)
                pair = m - 1
        steps.append((temp, root / pair, root / (m - pair), m))
        have.add(temp)

    go(n)
    return steps


def _build(temps: list[Fraction], max_power: int) -> tuple[list, float]:
    """Entries ``(temp, factors, power)`` for ``temps`` with the greedy roots, each temperature added by
    the root and chain that need the fewest new entries (cheapest first); and the plan's cost."""
    roots = _roots(temps, max_power)
    entries: list[tuple[Fraction, tuple[Fraction, Fraction] | None, int]] = [(r, None, 1) for r in roots]
    known = set(roots)
    pending = set(temps) - known
    while pending:
        options = [(len(steps), n, temp, steps) for temp in pending for root in roots
                   if (n := _cover(root, temp, max_power)) is not None
                   for steps in [_chain(root, n, known)]]
        _, _, temp, steps = min(options, key=lambda o: o[:3])
        for made, a, b, power in steps:
            entries.append((made, (a, b), power))
            known.add(made)
        pending.discard(temp)
    return entries, ROOT_COST * len(roots) + len(entries) - len(roots)


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
    entries, _ = min((_build(distinct, p) for p in range(1, max_power + 1)), key=lambda plan: plan[1])
    index = {temp: j for j, (temp, _, _) in enumerate(entries)}
    return ExpPlan(
        entry_temperature=tuple(float(temp) for temp, _, _ in entries),
        factors=tuple(None if f is None else (index[f[0]], index[f[1]]) for _, f, _ in entries),
        power=tuple(p for _, _, p in entries),
        temperature_entry=tuple(index[t] for t in exact),
    )
