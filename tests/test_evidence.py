"""The evidence engine's statistics against numbers derived by hand (derivations in the comments), its
verdicts (never one from a single seed), its errors, its sentences; and workbench.compare's one-seed case."""

import doctest
import math

import pytest
from scipy import stats

from eureka_kit.workbench import evidence
from eureka_kit.workbench.arms import compare
from eureka_kit.workbench.evidence import (
    Interval,
    judge,
    mean_ci,
    paired_difference,
    per_seed_differences,
    sentence,
    verdict,
    wilson_interval,
)


def test_docstring_examples_hold():
    assert doctest.testmod(evidence).failed == 0


def test_mean_ci_three_seeds_by_hand():
    # [1, 2, 3]: mean 2; squared deviations 1 + 0 + 1 = 2; sd = sqrt(2 / (3 - 1)) = 1 (Bessel).
    # t_{0.975, 2} = 4.302653 (table); half-width = 4.302653 * 1 / sqrt(3) = 4.302653 / 1.732051 = 2.484138.
    # CI = 2 -/+ 2.484138 = (-0.484138, 4.484138).
    iv = mean_ci([1, 2, 3])
    assert (iv.mean, iv.sd, iv.n, iv.level) == (2.0, 1.0, 3, 0.95)
    assert iv.low == pytest.approx(-0.484138, abs=1e-6) and iv.high == pytest.approx(4.484138, abs=1e-6)


def test_mean_ci_other_level_by_hand():
    # Same values at 90%: t_{0.95, 2} = 2.919986; half-width = 2.919986 / 1.732051 = 1.685854.
    iv = mean_ci([1, 2, 3], level=0.90)
    assert iv.low == pytest.approx(0.314146, abs=1e-6) and iv.high == pytest.approx(3.685854, abs=1e-6)


def test_mean_ci_one_seed_has_no_interval():
    iv = mean_ci([0.7])
    assert iv.mean == 0.7 and iv.n == 1
    assert math.isnan(iv.low) and math.isnan(iv.high) and math.isnan(iv.sd)


def test_mean_ci_equal_values_give_zero_width():
    iv = mean_ci([0.5, 0.5, 0.5])
    assert (iv.low, iv.mean, iv.high, iv.sd) == (0.5, 0.5, 0.5, 0.0)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_mean_ci_rejects_non_numbers_naming_the_index(bad):
    with pytest.raises(ValueError, match=r"values\[1\]"):
        mean_ci([0.1, bad, 0.3])


def test_mean_ci_rejects_empty_and_bad_level():
    with pytest.raises(ValueError, match="empty"):
        mean_ci([])
    with pytest.raises(ValueError, match="level"):
        mean_ci([1, 2], level=95)


def test_paired_difference_by_hand():
    # Per-seed d = a - b = 0.05, 0.10, 0.05, 0.10: mean 0.075; deviations +-0.025, squared 4 * 0.000625 = 0.0025;
    # sd = sqrt(0.0025 / 3) = 0.0288675; se = sd / sqrt(4) = 0.0144338; t_{0.975, 3} = 3.182446;
    # half-width = 3.182446 * 0.0144338 = 0.0459340 -> CI (0.029066, 0.120934): above 0.
    a = {"s1": 0.50, "s2": 0.60, "s3": 0.55, "s4": 0.65}
    b = {"s3": 0.50, "s1": 0.45, "s4": 0.55, "s2": 0.50}  # other key order: paired by seed, not position
    iv = paired_difference(a, b)
    assert iv.mean == pytest.approx(0.075) and iv.n == 4 and iv.sd == pytest.approx(0.0288675, abs=1e-7)
    assert iv.low == pytest.approx(0.029066, abs=1e-6) and iv.high == pytest.approx(0.120934, abs=1e-6)
    assert verdict(iv) == "supports"
    # Lists pair by position and give the same interval.
    assert paired_difference([0.50, 0.60, 0.55, 0.65], [0.45, 0.50, 0.50, 0.55]) == pytest.approx(iv)
    # Pairing removes the seed-to-seed spread the arms share: each arm's own sd (0.0645) exceeds the d_i's.
    assert mean_ci(list(a.values())).sd > iv.sd and mean_ci(list(b.values())).sd > iv.sd


def test_paired_difference_rejects_mismatched_seeds():
    with pytest.raises(ValueError, match=r"len\(a\) = 3, len\(b\) = 2"):
        paired_difference([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match=r"missing from b: \[3\], missing from a: \[4\]"):
        paired_difference({1: 0.1, 2: 0.2, 3: 0.3}, {1: 0.1, 2: 0.2, 4: 0.4})
    with pytest.raises(ValueError, match="both"):
        paired_difference({1: 0.1}, [0.1])
    with pytest.raises(ValueError, match=r"b\[0\]"):
        paired_difference([1, 2], [float("nan"), 2])


def test_per_seed_differences_keep_the_seeds():
    assert per_seed_differences({7: 1.0, 9: 3.0}, {9: 1.0, 7: 0.5}) == {7: 0.5, 9: 2.0}
    assert per_seed_differences([1.0, 3.0], [0.5, 1.0]) == {0: 0.5, 1: 2.0}


def test_wilson_by_hand():
    # 8/10 at 95%: p = 0.8, z = 1.959964, z^2 = 3.841459, 1 + z^2/n = 1.384146.
    # center = (0.8 + 3.841459/20) / 1.384146 = 0.992073 / 1.384146 = 0.716740;
    # half = 1.959964 * sqrt(0.8*0.2/10 + 3.841459/400) / 1.384146 = 1.959964 * 0.160011 / 1.384146 = 0.226578
    # -> (0.4902, 0.9433).
    iv = wilson_interval(8, 10)
    assert iv.mean == 0.8 and iv.n == 10 and iv.sd == pytest.approx(0.4)
    assert iv.low == pytest.approx(0.4902, abs=1e-4) and iv.high == pytest.approx(0.9433, abs=1e-4)
    # 0/10: center = half = (3.841459/20) / 1.384146 = 0.138766 -> (0, 0.277532): not zero-width at 0/n.
    iv = wilson_interval(0, 10)
    assert iv.low == 0 and iv.high == pytest.approx(0.277532, abs=1e-6)


@pytest.mark.parametrize("k,n,level", [(8, 10, 0.95), (0, 10, 0.95), (10, 10, 0.9), (37, 120, 0.99), (1, 1, 0.95)])
def test_wilson_matches_scipy(k, n, level):
    ref = stats.binomtest(k, n).proportion_ci(confidence_level=level, method="wilson")
    iv = wilson_interval(k, n, level)
    assert (iv.low, iv.high) == pytest.approx((ref.low, ref.high), abs=1e-12)


@pytest.mark.parametrize("k,n", [(11, 10), (-1, 10), (0, 0)])
def test_wilson_rejects_impossible_counts(k, n):
    with pytest.raises(ValueError, match="successes"):
        wilson_interval(k, n)


@pytest.mark.parametrize("effects,expected", [
    ([0.02, 0.03, 0.025], "supports"),          # mean 0.025, sd 0.005, half 4.302653*0.005/sqrt(3) = 0.0124
    ([-0.02, -0.03, -0.025], "contradicts"),    # the mirror image: CI (-0.0374, -0.0126)
    ([0.05, -0.04, 0.01], "inconclusive"),      # mean 0.0067, sd 0.0451, half 0.112: covers 0
    ([0.5], "inconclusive"),                    # one seed, however large: no verdict
])
def test_verdicts(effects, expected):
    assert verdict(mean_ci(effects)) == expected
    assert judge(effects).verdict == expected


def test_verdict_never_from_one_seed_even_with_an_interval():
    assert verdict(Interval(mean=1.0, low=0.5, high=1.5, n=1, sd=0.0, level=0.95)) == "inconclusive"


def test_judge_keeps_seeds_and_per_seed_effects():
    j = judge({11: 0.02, 12: 0.03, 13: 0.025})
    assert j.seeds == (11, 12, 13) and j.per_seed_effect == (0.02, 0.03, 0.025) and j.n == 3
    assert j.effect == pytest.approx(0.025)
    # sd 0.005; half = 4.302653 * 0.005 / 1.732051 = 0.012421
    assert (j.ci_low, j.ci_high) == pytest.approx((0.012579, 0.037421), abs=1e-6)
    assert judge([0.1, 0.2]).seeds == (0, 1)


def test_sentence_states_effect_ci_seeds_and_verdict():
    j = judge({0: 0.010, 1: 0.020, 2: 0.006})
    # mean 0.012; sd = sqrt((0.002^2 + 0.008^2 + 0.006^2) / 2) = sqrt(0.000052) = 0.0072111;
    # half = 4.302653 * 0.0072111 / 1.732051 = 0.017914 -> CI (-0.0059, +0.0299)
    text = sentence(j, "CPGD keeps fewer ratio outliers than GRPO")
    assert text == ("CPGD keeps fewer ratio outliers than GRPO: +0.012 (95% CI -0.00591 to +0.0299, 3 seeds)"
                    " — inconclusive.")
    text = sentence(judge([2.0, 3.0, 2.5], level=0.9), "CPGD is more accurate", unit="pp")
    assert "+2.5 pp (90% CI +" in text and "3 seeds" in text and text.endswith("— supports.")


def test_sentence_with_one_seed_gives_no_verdict():
    text = sentence(judge({42: 0.3}), "CPGD is more accurate than GRPO", unit="%")
    assert text == "CPGD is more accurate than GRPO: +0.3% (95% CI n/a, 1 seed) — one seed: no verdict."


@pytest.mark.parametrize("sd", [None, float("nan")])
def test_compare_with_one_seed_asserts_no_direction(sd):
    text = compare("cpgd", 0.45, "grpo", 0.30, sd=sd, what="test accuracy")
    assert "one seed: no verdict" in text and "inconclusive" in text
    assert "higher than" not in text and "lower than" not in text
    assert "cpgd 0.45 vs grpo 0.3" in text and "+0.15" in text


def test_compare_with_seed_spread():
    assert "cpgd 0.45 is higher than grpo 0.3" in compare("cpgd", 0.45, "grpo", 0.30, sd=0.05, what="acc")
    assert "is lower than" in compare("cpgd", 0.30, "grpo", 0.45, sd=0.05, what="acc")
    assert "within the seed spread" in compare("cpgd", 0.45, "grpo", 0.30, sd=0.2, what="acc")
    assert compare("cpgd", float("nan"), "grpo", 0.3, what="acc") == "acc: not measured"
