"""policy_stats on a hand example (ratio quantiles, tails, approx KL, clip fractions by side, drift),
reference KL stats, and the collapse sentinels on crafted and calm histories."""

from __future__ import annotations

import math

import pytest
import torch

from eureka_kit.algos import diagnostics

# Valid ratios r = .4, 1, 1, 2.5, 1.2 (5 tokens) and one masked token with a huge log-ratio.
RATIOS = [0.4, 1.0, 1.0, 2.5, 1.2]


def _stats(**kwargs):
    log_ratio = torch.tensor([[math.log(r) for r in RATIOS] + [50.0]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 0]])
    adv = torch.tensor([[1.0, 1.0, -1.0, -1.0, 2.0, 7.0]])
    clip_info = {
        "clipped_low": torch.tensor([[True, False, False, False, False, True]]),
        "clipped_high": torch.tensor([[False, False, False, True, True, True]]),
    }
    clip_info.update(kwargs.pop("extra", {}))
    return diagnostics.policy_stats(log_ratio, adv, mask, clip_info, **kwargs)


def test_policy_stats_by_hand():
    s = _stats(drift_clip=1.0)
    assert s["policy/num_tokens"] == 5
    assert s["policy/ratio_mean"] == pytest.approx(6.1 / 5)
    assert s["policy/ratio_min"] == pytest.approx(0.4)
    assert s["policy/ratio_max"] == pytest.approx(2.5)  # the masked e^50 is ignored
    assert s["policy/log_ratio_abs_max"] == pytest.approx(math.log(2.5))
    # tail: |ln r| > ln 2 -> .4 and 2.5
    assert s["policy/ratio_tail_frac"] == pytest.approx(2 / 5)
    # k3 of KL(old || new): mean(r - 1 - ln r)
    k3 = sum(r - 1 - math.log(r) for r in RATIOS) / 5
    assert s["policy/approx_kl"] == pytest.approx(k3)
    # drift coef min(r - 1, c = 1): -.6, 0, 0, 1 (capped from 1.5), .2 -> mean .12; capped 1 of 5
    assert s["drift/coef_mean"] == pytest.approx(0.6 / 5)
    assert s["drift/capped_frac"] == pytest.approx(1 / 5)
    # clip fractions over valid tokens only (the masked token is flagged on both sides)
    assert s["policy/clipfrac_low"] == pytest.approx(1 / 5)
    assert s["policy/clipfrac_high"] == pytest.approx(2 / 5)
    assert s["policy/clipfrac"] == pytest.approx(3 / 5)
    assert s["adv/token_mean"] == pytest.approx(2 / 5)
    assert "policy/dual_clipfrac" not in s


def test_policy_stats_quantiles():
    # sorted valid ratios [.4, 1, 1, 1.2, 2.5]; nearest rank on index q * (n - 1).
    s = _stats()
    assert s["policy/ratio_p0_1"] == pytest.approx(0.4)
    assert s["policy/ratio_p1"] == pytest.approx(0.4)
    assert s["policy/ratio_p50"] == pytest.approx(1.0)
    assert s["policy/ratio_p99"] == pytest.approx(2.5)
    assert s["policy/ratio_p99_9"] == pytest.approx(2.5)
    # 101 tokens with ratios 1.00 .. 2.00: p1 = 1.01, p50 = 1.5, p99 = 1.99
    ratios = torch.linspace(1.0, 2.0, 101, dtype=torch.float64)
    s = diagnostics.policy_stats(ratios.log().view(1, -1), torch.zeros(1, 101), torch.ones(1, 101), {})
    assert s["policy/ratio_p1"] == pytest.approx(1.01)
    assert s["policy/ratio_p50"] == pytest.approx(1.5)
    assert s["policy/ratio_p99"] == pytest.approx(1.99)
    assert s["policy/clipfrac"] == 0.0


def test_dual_clipfrac_and_empty_mask():
    s = _stats(extra={"dual_clipped": torch.tensor([[False, False, False, True, False, True]])})
    assert s["policy/dual_clipfrac"] == pytest.approx(1 / 5)
    empty = diagnostics.policy_stats(torch.zeros(1, 2), torch.zeros(1, 2), torch.zeros(1, 2), {})
    assert empty == {"policy/num_tokens": 0.0}


def test_reference_kl_stats():
    u = [0.5, -0.3]
    s = diagnostics.reference_kl_stats(torch.tensor([[0.5, -0.3, 9.0]]), torch.zeros(1, 3),
                                       torch.tensor([[1, 1, 0]]))
    assert s["kl/ref_k1"] == pytest.approx(0.1)
    assert s["kl/ref_k3"] == pytest.approx(sum(math.exp(-x) - 1 + x for x in u) / 2)


# ---------------------------------------------------------------------------------------------
# Collapse sentinels.


def calm_history(n=30):
    return [{"step": i, "policy/ratio_max": 1.5, "policy/entropy": 1.0 - 0.001 * i, "rollout/len_mean": 100.0 + i % 3,
             "reward/format_frac": 0.6, "reward/accuracy": 0.4} for i in range(n)]


def kinds(warnings):
    return {w["kind"] for w in warnings}


def test_calm_history_gives_no_warning():
    assert diagnostics.collapse_warnings(calm_history()) == []
    assert diagnostics.collapse_warnings([]) == []


def test_ratio_tail_flagged():
    h = calm_history()
    h[12]["policy/ratio_max"] = 50.0
    w = diagnostics.collapse_warnings(h)
    assert [(x["kind"], x["step"]) for x in w] == [("ratio_tail", 12)]
    assert w[0]["value"] == 50.0
    assert diagnostics.collapse_warnings(h, ratio_max=100.0) == []


def test_entropy_slope_flagged():
    h = calm_history()
    for i in range(15, 30):
        h[i]["policy/entropy"] = 1.0 - 0.05 * (i - 15)
    w = diagnostics.collapse_warnings(h)
    assert kinds(w) == {"entropy_slope"}
    assert max(x["step"] for x in w) == 29
    assert min(x["value"] for x in w) == pytest.approx(-0.05)


def test_length_collapse_flagged():
    h = calm_history()
    for i in range(20, 30):
        h[i]["rollout/len_mean"] = 30.0  # below 0.5 x the early median ~101
    w = diagnostics.collapse_warnings(h)
    assert kinds(w) == {"length_collapse"}
    assert sorted(x["step"] for x in w) == list(range(20, 30))


def test_format_divergence_flagged():
    # Window 10: at step 12 the format rate has risen 0.6 -> 0.95 since step 3 while accuracy fell 0.4 -> 0.2:
    # gap = 0.35 - max(0, -0.2) = 0.35 > 0.3.
    h = calm_history()
    h[12]["reward/format_frac"], h[12]["reward/accuracy"] = 0.95, 0.2
    w = diagnostics.collapse_warnings(h)
    assert [(x["kind"], x["step"]) for x in w] == [("format_divergence", 12)]
    assert w[0]["value"] == pytest.approx(0.35)


def test_a_model_that_was_always_well_formatted_is_not_flagged():
    h = [{**row, "reward/format_frac": 1.0, "reward/accuracy": 0.3} for row in calm_history()]
    assert "format_divergence" not in kinds(diagnostics.collapse_warnings(h))


def test_accuracy_falling_at_a_constant_format_rate_is_not_format_hacking():
    # format 1.0 throughout while accuracy falls 0.6 -> 0.1: what every over-pressured arm does; the old rule
    # (format gain - accuracy gain = 0 - (-0.5) = 0.5 > 0.3) fired here
    h = [{**row, "reward/format_frac": 1.0, "reward/accuracy": 0.6 - 0.5 * i / 29} for i, row in
         enumerate(calm_history())]
    assert "format_divergence" not in kinds(diagnostics.collapse_warnings(h))
    # a format rate that rises 0.5 -> 1.0 while accuracy gains only 0.1 still fires
    h = [{**row, "reward/format_frac": 0.5 + 0.5 * min(i, 10) / 10, "reward/accuracy": 0.3 + 0.1 * min(i, 10) / 10}
         for i, row in enumerate(calm_history())]
    assert "format_divergence" in kinds(diagnostics.collapse_warnings(h))


def test_missing_metrics_are_skipped():
    assert diagnostics.collapse_warnings([{"step": i} for i in range(20)]) == []


def test_advantage_stats_per_response_and_per_token():
    assert diagnostics.advantage_stats(torch.tensor([1.0, -3.0, 0.5, 0.5]), torch.ones(4, 2)) == \
        {"adv/mean": -0.25, "adv/abs_max": 3.0}
    # step advantages: row 0 has 2 valid tokens (2, 4) -> 3; row 1 has 1 valid token (-1) -> -1; padding (9, -7)
    # must count neither in the mean nor in the max
    adv = torch.tensor([[2.0, 4.0, 9.0], [-1.0, -7.0, -7.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    assert diagnostics.advantage_stats(adv, mask) == {"adv/mean": 1.0, "adv/abs_max": 4.0}
