"""The statistics behind every "what this shows" sentence: per-seed values in, intervals and verdicts out.

Pure functions over plain numbers (no runs, no files, no pandas), so every number a report states can be
re-derived by hand from the per-seed values it lists:

- `mean_ci`: Student-t confidence interval of a mean over seeds.
- `paired_difference`: the t interval of per-seed differences a_i - b_i of two arms run on the same seeds.
- `wilson_interval`: the Wilson score interval of a success rate (k of n problems solved).
- `verdict`: "supports" / "contradicts" / "inconclusive" from a claim-oriented interval; never a verdict
  from one seed.
- `judge` and `sentence`: per-seed effects -> a `Judgement` -> one plain-English sentence.

An effect is *claim-oriented*: positive means the direction the paper claims. To test "CPGD keeps fewer
ratio outliers than GRPO", pass grpo_outliers - cpgd_outliers, not the other way round.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from scipy import stats

Values = Sequence[float] | Mapping[object, float]


@dataclass(frozen=True)
class Interval:
    """A point estimate with its two-sided `level` confidence interval; low/high are NaN when the data
    cannot give one (a single seed). `n` counts seeds (or trials, for `wilson_interval`)."""

    mean: float
    low: float
    high: float
    n: int
    sd: float
    level: float


@dataclass(frozen=True)
class Judgement:
    """Per-seed claim-oriented effects, their mean with its t interval, and the verdict. `seeds` and
    `per_seed_effect` are aligned: the effect measured on seeds[i] is per_seed_effect[i]."""

    effect: float
    ci_low: float
    ci_high: float
    n: int
    seeds: tuple
    per_seed_effect: tuple[float, ...]
    verdict: str
    level: float = 0.95


def _check_level(level: float) -> None:
    if not 0 < level < 1:
        raise ValueError(f"level must lie strictly between 0 and 1 (e.g. 0.95), got {level!r}")


def _finite(values: Sequence[float], name: str = "values") -> list[float]:
    out = [float(v) for v in values]
    if not out:
        raise ValueError(f"{name} is empty: no seeds, no estimate")
    for i, v in enumerate(out):
        if not math.isfinite(v):
            raise ValueError(f"{name}[{i}] is {v}: drop or re-run that seed rather than average a non-number")
    return out


def mean_ci(values: Sequence[float], level: float = 0.95) -> Interval:
    """Student-t interval of the mean of per-seed values.

        mean ± t_{(1+level)/2, n-1} * sd / sqrt(n),   sd = sqrt(sum (x_i - mean)^2 / (n - 1))   (Bessel)

    One value gives its mean with low = high = NaN: one seed has no spread, so no interval. All-equal
    values give a zero-width interval. NaN/inf values and an empty list raise ValueError.

    >>> iv = mean_ci([1, 2, 3])          # sd 1, t_{0.975,2} = 4.302653
    >>> round(iv.low, 4), round(iv.high, 4)
    (-0.4841, 4.4841)
    """
    _check_level(level)
    xs = _finite(values)
    n = len(xs)
    mean = math.fsum(xs) / n
    if n == 1:
        return Interval(mean, math.nan, math.nan, 1, math.nan, level)
    sd = math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (n - 1))
    half = float(stats.t.ppf((1 + level) / 2, n - 1)) * sd / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n, sd, level)


def per_seed_differences(a: Values, b: Values) -> dict:
    """{seed: a_seed - b_seed} for two arms run on the same seeds. Lists are paired by position (their
    lengths must match; seeds are then 0..n-1); dicts {seed: value} are paired by key and must hold the
    same seeds. Mismatches raise ValueError naming what is missing."""
    if isinstance(a, Mapping) != isinstance(b, Mapping):
        raise ValueError("pass both arms as {seed: value} dicts or both as lists paired by position")
    if isinstance(a, Mapping):
        only_a = [s for s in a if s not in b]
        only_b = [s for s in b if s not in a]
        if only_a or only_b:
            raise ValueError(f"the arms were not run on the same seeds: missing from b: {only_a}, "
                             f"missing from a: {only_b}")
        seeds = list(a)
        xa = _finite([a[s] for s in seeds], "a")
        xb = _finite([b[s] for s in seeds], "b")
    else:
        if len(a) != len(b):
            raise ValueError(f"paired arms need one value per seed in each: len(a) = {len(a)}, len(b) = {len(b)}")
        xa, xb = _finite(a, "a"), _finite(b, "b")
        seeds = list(range(len(xa)))
    return {s: x - y for s, x, y in zip(seeds, xa, xb, strict=True)}


def paired_difference(a: Values, b: Values, level: float = 0.95) -> Interval:
    """t interval of the mean per-seed difference d_i = a_i - b_i (`mean_ci` over the d_i).

    Pairing removes what the two arms share on a seed (its data order, its initialization), so the
    interval is narrower than comparing two independent means whenever seeds matter.

    >>> iv = paired_difference({0: 3, 1: 5, 2: 4}, {0: 1, 1: 2, 2: 3})   # d = 2, 3, 1: mean 2, sd 1
    >>> round(iv.low, 4), round(iv.high, 4)
    (-0.4841, 4.4841)
    """
    return mean_ci(list(per_seed_differences(a, b).values()), level)


def wilson_interval(successes: int, n: int, level: float = 0.95) -> Interval:
    """Wilson score interval of a success rate p = k / n, with z = Phi^{-1}((1 + level) / 2):

        (p + z^2/(2n) ± z * sqrt(p(1-p)/n + z^2/(4n^2))) / (1 + z^2/n)

    Unlike p ± z*sqrt(p(1-p)/n) it stays inside [0, 1] and is not zero-width at 0/n or n/n. `sd` is
    sqrt(p(1-p)), the spread of the 0/1 outcomes.

    >>> iv = wilson_interval(8, 10)
    >>> round(iv.low, 4), round(iv.high, 4)
    (0.4902, 0.9433)
    """
    _check_level(level)
    if n < 1 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n and n >= 1, got successes={successes!r}, n={n!r}")
    p, z = successes / n, float(stats.norm.ppf((1 + level) / 2))
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return Interval(p, max(0.0, center - half), min(1.0, center + half), n, math.sqrt(p * (1 - p)), level)


def verdict(interval: Interval) -> str:
    """"supports" when the claim-oriented interval lies above 0 (low > 0), "contradicts" when it lies below
    (high < 0), "inconclusive" when it covers 0, and always "inconclusive" with fewer than 2 seeds.

    >>> verdict(mean_ci([0.9, 1.0, 1.1])), verdict(mean_ci([-1, 1, 0])), verdict(mean_ci([5.0]))
    ('supports', 'inconclusive', 'inconclusive')
    """
    if interval.n < 2 or math.isnan(interval.low) or math.isnan(interval.high):
        return "inconclusive"
    if interval.low > 0:
        return "supports"
    if interval.high < 0:
        return "contradicts"
    return "inconclusive"


def judge(per_seed_effect: Values, level: float = 0.95) -> Judgement:
    """Mean claim-oriented effect over seeds, its t interval (`mean_ci`) and its `verdict`. Takes
    {seed: effect} or a list (seeds 0..n-1); see `per_seed_differences` to build one from two arms.

    >>> j = judge({1: 0.02, 2: 0.03, 3: 0.025})
    >>> j.verdict, j.n, j.seeds
    ('supports', 3, (1, 2, 3))
    """
    if isinstance(per_seed_effect, Mapping):
        seeds, values = tuple(per_seed_effect), list(per_seed_effect.values())
    else:
        values = list(per_seed_effect)
        seeds = tuple(range(len(values)))
    iv = mean_ci(values, level)
    return Judgement(iv.mean, iv.low, iv.high, iv.n, seeds, tuple(float(v) for v in values), verdict(iv), level)


def _num(x: float, unit: str) -> str:
    return f"{x:+.3g}" + (unit if not unit or unit.startswith("%") else " " + unit)


def sentence(judgement: Judgement, claim: str, unit: str = "") -> str:
    """One plain-English sentence: the claim, the mean effect, its interval, the seed count, the verdict.

    >>> j = Judgement(0.012, -0.003, 0.027, 3, (0, 1, 2), (0.01, 0.02, 0.006), "inconclusive")
    >>> sentence(j, "CPGD keeps fewer ratio outliers than GRPO")
    'CPGD keeps fewer ratio outliers than GRPO: +0.012 (95% CI -0.003 to +0.027, 3 seeds) — inconclusive.'
    """
    level = f"{judgement.level * 100:g}%"
    effect = _num(judgement.effect, unit)
    if judgement.n < 2:
        return f"{claim}: {effect} ({level} CI n/a, 1 seed) — one seed: no verdict."
    ci = f"{_num(judgement.ci_low, unit)} to {_num(judgement.ci_high, unit)}"
    return f"{claim}: {effect} ({level} CI {ci}, {judgement.n} seeds) — {judgement.verdict}."


def judged_row(comparison: str, claim: str, metric: str, effects: Mapping[int, float],
               reason: str = "fewer than 2 seeds") -> dict:
    """A comparison as a JSON-ready row: per-seed claim-oriented `effects` ({seed: effect}), their mean, 95% CI and
    verdict (`judge`); with fewer than 2 seeds "inconclusive" and `reason` instead of an interval. The labs'
    mismatch.json and objectives.json hold these rows; `judged_table` and `judged_line` render them.

    >>> judged_row("a vs b", "a beats b", "pp", {0: 1.0, 1: 2.0, 2: 1.5})["verdict"]
    'supports'
    """
    seeds = sorted(effects)
    row = dict(comparison=comparison, claim=claim, metric=metric, seeds=seeds,
               per_seed_effect=[effects[s] for s in seeds])
    if len(seeds) < 2:
        return {**row, "verdict": "inconclusive", "reason": reason}
    j = judge({s: effects[s] for s in seeds})
    return {**row, "effect": j.effect, "ci_low": j.ci_low, "ci_high": j.ci_high, "verdict": j.verdict}


def judged_table(rows: Sequence[dict]):
    """`judged_row`s as a pandas DataFrame: comparison, claim, metric, seeds, per-seed effects, mean [95% CI], verdict."""
    import pandas as pd

    def ci(r):
        return f"{r['effect']:+.3g} [{r['ci_low']:+.3g}, {r['ci_high']:+.3g}]" if "effect" in r else "n/a"
    return pd.DataFrame([{"comparison": r["comparison"], "claim": r["claim"], "metric": r["metric"],
                          "seeds": ", ".join(map(str, r["seeds"])),
                          "per-seed effect": ", ".join(f"{v:+.3g}" for v in r["per_seed_effect"]),
                          "mean [95% CI]": ci(r), "verdict": r["verdict"]} for r in rows])


def judged_line(r: dict) -> str:
    """One markdown bullet for a `judged_row`: effect, 95% CI, seeds and the verdict in bold."""
    if "effect" not in r:
        return f"- {r['comparison']}: {r['verdict']} ({r.get('reason', '')})."
    return (f"- {r['comparison']} ({r['metric']}): {r['effect']:+.3g} [95% CI {r['ci_low']:+.3g}, "
            f"{r['ci_high']:+.3g}] over seeds {', '.join(map(str, r['seeds']))}: **{r['verdict']}**.")
