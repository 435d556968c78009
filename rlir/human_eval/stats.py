"""Win rates of an A/B human evaluation, with 95% intervals that respect clustering by rater.

Pure functions (no I/O): the report, the HTML section and the tests call them directly.

Each question's votes are A, B or a tie ("same"). We report
- the rate of each outcome over all votes (A + B + tie = 1), each with a Wilson interval, and
- A's share of the decisive votes (ties left out), the usual head-to-head number, with a Wilson interval.
Votes by one rater are correlated (a rater who prefers sharp frames does so on every trial), so n votes
carry less information than n independent ones. Each interval uses an effective n = n / design effect,
with the design effect 1 + (m̄ - 1)·ICC (Kish), m̄ the mean votes per rater and the ICC estimated by a
one-way ANOVA over rater groups of the 0/1 outcome in question, floored at 0.
"""
from __future__ import annotations

import math
from collections import defaultdict

Z95 = 1.959963984540054
INTERVAL_METHOD = "wilson_design_effect"
INTERVAL_NOTE = ("95% Wilson score intervals computed with an effective n = n / design effect; design effect "
                 "= 1 + (mean votes per rater - 1) * ICC, ICC from a one-way ANOVA over raters of the 0/1 "
                 "outcome, floored at 0 (Kish). With a single rater the ICC cannot be estimated: design effect 1, "
                 "and the interval speaks for that rater only.")


def wilson(k: float, n: float, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion k/n; n may be an effective (non-integer) sample size."""
    if n <= 0:
        return (float("nan"), float("nan"))
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def icc_anova(groups: list[list[float]]) -> float | None:
    """ICC(1) of values grouped by rater, from a one-way ANOVA, floored at 0; None when it cannot be
    estimated (fewer than two raters, or no rater with two votes)."""
    groups = [g for g in groups if g]
    k, n = len(groups), sum(len(g) for g in groups)
    if k < 2 or n - k < 1:
        return None
    grand = sum(sum(g) for g in groups) / n
    means = [sum(g) / len(g) for g in groups]
    ssb = sum(len(g) * (m - grand) ** 2 for g, m in zip(groups, means))
    ssw = sum((y - m) ** 2 for g, m in zip(groups, means) for y in g)
    msb, msw = ssb / (k - 1), ssw / (n - k)
    m0 = (n - sum(len(g) ** 2 for g in groups) / n) / (k - 1)    # the ANOVA's mean group size (unequal groups)
    denom = msb + (m0 - 1) * msw
    if denom <= 0:                    # every value the same: no variance to apportion
        return 0.0
    return max(0.0, (msb - msw) / denom)


def design_effect(groups: list[list[float]]) -> tuple[float, float | None]:
    """(design effect, ICC) of the 0/1 values grouped by rater: 1 + (mean group size - 1) * ICC."""
    sizes = [len(g) for g in groups if g]
    if not sizes:
        return 1.0, None
    m_bar = sum(sizes) / len(sizes)
    icc = icc_anova(groups)
    return (1.0 + (m_bar - 1.0) * icc if icc is not None else 1.0), icc


def proportion(votes: list[tuple[str, str]], hit) -> dict:
    """votes: (rater, outcome); hit(outcome) -> bool. Rate, count, 95% interval on the effective n."""
    by_rater: dict[str, list[float]] = defaultdict(list)
    for rater, outcome in votes:
        by_rater[rater].append(1.0 if hit(outcome) else 0.0)
    n = len(votes)
    k = sum(sum(g) for g in by_rater.values())
    deff, icc = design_effect(list(by_rater.values()))
    if not n:                         # None, not NaN: the summary is written as JSON
        return {"count": 0, "n": 0, "rate": None, "ci95": [None, None], "design_effect": deff, "icc": icc,
                "n_effective": 0.0}
    n_eff = n / deff
    lo, hi = wilson(k / n * n_eff, n_eff)                    # the same proportion over the effective n
    return {"count": int(k), "n": n, "rate": k / n, "ci95": [lo, hi], "design_effect": deff, "icc": icc,
            "n_effective": n_eff}


def question_summary(votes: list[tuple[str, str]], a: str, b: str, tie: str = "same") -> dict:
    """votes: (rater, outcome) with outcome a, b or tie (model names as stored). The rates of a, b and tie
    over all votes (they add up to 1), and a's share of the decisive votes (ties left out)."""
    unknown = {o for _, o in votes} - {a, b, tie}
    if unknown:
        raise ValueError(f"outcomes {sorted(unknown)} are neither {a!r}, {b!r} nor {tie!r}")
    decisive = [(r, o) for r, o in votes if o != tie]
    share = proportion(decisive, lambda o: o == a)
    raters = {r for r, _ in votes}
    return {
        "n_votes": len(votes), "n_raters": len(raters),
        "mean_votes_per_rater": len(votes) / len(raters) if raters else 0.0,
        "wins": {a: proportion(votes, lambda o: o == a), b: proportion(votes, lambda o: o == b)},
        "ties": proportion(votes, lambda o: o == tie),
        "decisive": {"n": len(decisive), "model": a, "share": share["rate"], "ci95": share["ci95"],
                     "other_model": b, "other_share": 1 - share["rate"] if decisive else None,
                     "other_ci95": [1 - share["ci95"][1], 1 - share["ci95"][0]] if decisive else [None, None],
                     "design_effect": share["design_effect"], "icc": share["icc"],
                     "n_effective": share["n_effective"]},
    }
