"""Advantage estimators and CPGD weights (docs/algorithms.md), worked out by hand, plus
hypothesis properties (shift/scale invariance and permutation equivariance of grpo, RLOO sums).

Two groups of K = 4 used throughout:
  g1 = [1, 0, 0, 0]:   mean 0.25, deviations [.75, -.25, -.25, -.25], Bessel var .75/3 = .25 -> std .5
                       (the biased std would be sqrt(.1875) = .433)
  g2 = [1, 1, 0, .5]:  mean .625, deviations [.375, .375, -.625, -.125], sum sq .6875, Bessel var .6875/3
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from eureka_kit.algos import advantages
from eureka_kit.config import ESTIMATORS, ConfigError

R = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.5])
DEV = [0.75, -0.25, -0.25, -0.25, 0.375, 0.375, -0.625, -0.125]
STD2 = math.sqrt(0.6875 / 3)


def assert_close(actual, expected, atol=1e-6):
    torch.testing.assert_close(actual.double(), torch.tensor(expected, dtype=torch.float64), atol=atol, rtol=0)


def test_grpo_uses_bessel_std():
    adv = advantages.compute(R, 4, "grpo")
    assert_close(adv, [d / 0.5 for d in DEV[:4]] + [d / STD2 for d in DEV[4:]])
    assert adv[0].item() == pytest.approx(1.5, abs=1e-6)  # a biased std would give 1.732


def test_grpo_std_eps_is_added_to_the_std():
    # (R - mean) / (std + eps): eps = 0.5 turns g1's std .5 into 1.
    adv = advantages.compute(R[:4], 4, "grpo", std_eps=0.5)
    assert_close(adv, DEV[:4])


@pytest.mark.parametrize("estimator", ["dr_grpo", "equal"])
def test_mean_centred(estimator):
    assert_close(advantages.compute(R, 4, estimator), DEV)


def test_rloo_leave_one_out_by_hand():
    # R_k - mean of the other three: g1: 1 - 0 = 1, 0 - 1/3; g2: 1 - 1.5/3 = .5, 0 - 2.5/3, .5 - 2/3.
    adv = advantages.compute(R, 4, "rloo")
    assert_close(adv, [1.0, -1 / 3, -1 / 3, -1 / 3, 0.5, 0.5, -2.5 / 3, 0.5 - 2 / 3])


def test_reinforce_pp_token_weighted_whitening():
    # R = [1, 0, 0, .5], lengths [3, 1, 2, 2] (8 tokens).
    # token-weighted mean = (3*1 + 2*.5) / 8 = .5; var = (3*.25 + 1*.25 + 2*.25 + 2*0) / 8 = .1875 (biased).
    # (a per-response mean would be .375, so an unweighted whitening fails this.)
    rewards, lengths = torch.tensor([1.0, 0.0, 0.0, 0.5]), torch.tensor([3, 1, 2, 2])
    adv = advantages.compute(rewards, 2, "reinforce_pp", lengths=lengths)
    sd = math.sqrt(0.1875)
    assert_close(adv, [0.5 / sd, -0.5 / sd, -0.5 / sd, 0.0])


def test_reinforce_pp_baseline_whitens_group_centred_rewards():
    # K = 2: R = [1, 0 | .5, .5] -> centred [.5, -.5, 0, 0]; lengths [1, 3, 2, 2] (8 tokens).
    # weighted mean = (.5 - 1.5) / 8 = -.125; var = (1 * .625^2 + 3 * .375^2 + 4 * .125^2) / 8 = .875 / 8.
    rewards, lengths = torch.tensor([1.0, 0.0, 0.5, 0.5]), torch.tensor([1, 3, 2, 2])
    adv = advantages.compute(rewards, 2, "reinforce_pp_baseline", lengths=lengths)
    sd = math.sqrt(0.875 / 8)
    assert_close(adv, [0.625 / sd, -0.375 / sd, 0.125 / sd, 0.125 / sd])


def test_whitening_variance_floor():
    # all-equal rewards: var 0 is clamped at 1e-8, so the result is 0, not nan.
    adv = advantages.compute(torch.full((4,), 0.7), 2, "reinforce_pp", lengths=torch.tensor([1, 2, 3, 4]))
    assert torch.isfinite(adv).all() and adv.abs().max() < 1e-3


def test_none_returns_raw_rewards():
    assert_close(advantages.compute(R, 4, "none"), R.tolist())


def test_whiten_flag_rescales_rloo():
    # rloo of [1, 0] and [0, 1] = [1, -1, -1, 1]; lengths all 1 -> mean 0, var 1 -> unchanged.
    # lengths [3, 1, 1, 1]: mean (3 - 1 - 1 + 1) / 6 = 1/3, var = (3 (2/3)^2 + 2 (4/3)^2 + (2/3)^2) / 6 = 8/9.
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0])
    adv = advantages.compute(rewards, 2, "rloo", whiten=True, lengths=torch.tensor([3, 1, 1, 1]))
    sd = math.sqrt(8 / 9)
    assert_close(adv, [(2 / 3) / sd, (-4 / 3) / sd, (-4 / 3) / sd, (2 / 3) / sd])


@pytest.mark.parametrize("estimator", ["grpo", "dr_grpo", "equal", "rloo"])
@pytest.mark.parametrize("value", [0.0, 1.0, 0.1, 0.3, 0.7, 1.3, -0.2, 123.456])
@pytest.mark.parametrize("k", [2, 3, 7, 8, 16])
def test_zero_variance_group_gets_exactly_zero_advantage(estimator, value, k):
    # Non-dyadic constants (0.1, 0.3, ...) once produced |A| ~ 0.9 for grpo: the float mean of K equal
    # values missed by one ulp and that residue was divided by std + 1e-9.
    rewards = torch.cat([torch.full((k,), value), torch.arange(k, dtype=torch.float32)])
    adv = advantages.compute(rewards, k, estimator)
    assert (adv[:k] == 0).all()
    assert adv[k:].abs().sum() > 0


def test_errors():
    with pytest.raises(ConfigError, match="advantage_estimator.*grpo.*rloo"):
        advantages.compute(R, 4, "gae")
    with pytest.raises(ConfigError, match="group_size"):
        advantages.compute(R, 1, "grpo")
    with pytest.raises(ValueError, match="group_size"):
        advantages.compute(R, 3, "rloo")
    # reinforce_pp has no group baseline: K = 1 is fine
    assert advantages.compute(R, 1, "reinforce_pp").shape == (8,)


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_every_estimator_returns_b_floats(estimator):
    adv = advantages.compute(R, 4, estimator, lengths=torch.arange(1, 9))
    assert adv.shape == (8,) and adv.dtype == torch.float32 and torch.isfinite(adv).all()


# ---------------------------------------------------------------------------------------------
# CPGD clip-filter-like weights (§1.5): omega = min(cap, N / N_nonzero); zero-std groups weight 1.


def test_clip_filter_like_weights_by_hand():
    # 4 groups of 2: [1, 0] nonzero, [1, 1] zero, [0, 0] zero, [.5, 0] nonzero -> N/N_nz = 4/2 = 2.
    rewards = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.5, 0.0])
    w = advantages.clip_filter_like_weights(rewards, 2, cap=3.0)
    assert w.tolist() == [2.0, 2.0, 1.0, 1.0, 1.0, 1.0, 2.0, 2.0]


def test_clip_filter_like_weights_cap():
    # 1 nonzero group of 4: N/N_nz = 4 > cap 3 -> 3; with cap 10 -> 4.
    rewards = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.1, 0.1])
    assert advantages.clip_filter_like_weights(rewards, 2, cap=3.0).tolist() == [3, 3, 1, 1, 1, 1, 1, 1]
    assert advantages.clip_filter_like_weights(rewards, 2, cap=10.0).tolist() == [4, 4, 1, 1, 1, 1, 1, 1]


def test_clip_filter_like_all_zero_std_gives_ones():
    rewards = torch.tensor([1.0, 1.0, 0.0, 0.0, 0.3, 0.3])
    assert advantages.clip_filter_like_weights(rewards, 2).tolist() == [1.0] * 6


def test_adora_weights():
    # K = 3. g1: correct lengths [5], wrong [10, 20] mean 15 -> 5 <= 15 -> lam.
    #        g2: correct [30], wrong [10, 20] -> 30 > 15 -> 1.   g3: no correct -> 1.
    #        g4: all correct -> no short wrong responses -> mean +inf -> lam.
    rewards = torch.tensor([1.5, 0.5, 0.0, 1.0, 0.0, 0.5, 0.0, 0.0, 0.5, 1.0, 1.5, 1.0])
    lengths = torch.tensor([5, 10, 20, 30, 10, 20, 1, 2, 3, 7, 8, 9])
    w = advantages.adora_weights(rewards, lengths, 3, lam=0.1)
    assert_close(w, [0.1] * 3 + [1.0] * 6 + [0.1] * 3)


# ---------------------------------------------------------------------------------------------
# Properties. Rewards on a 0.25 grid (like accuracy + format), so a group is either exactly constant
# or has std >= ~0.1, and float32 round-off stays far below the tolerance.
GRID = st.integers(0, 8).map(lambda i: i * 0.25)


@st.composite
def grouped_rewards(draw, min_k=2, max_k=8):
    k = draw(st.integers(min_k, max_k))
    n = draw(st.integers(1, 4))
    return k, draw(st.lists(GRID, min_size=k * n, max_size=k * n))


@settings(max_examples=60, deadline=None)
@given(grouped_rewards(), st.floats(-50, 50), st.floats(0.1, 10))
def test_grpo_invariant_to_shift_and_positive_scale(kr, shift, scale):
    k, rewards = kr
    base = advantages.compute(torch.tensor(rewards), k, "grpo")
    moved = advantages.compute(torch.tensor(rewards) * scale + shift, k, "grpo")
    torch.testing.assert_close(moved, base, atol=2e-3, rtol=0)


@settings(max_examples=60, deadline=None)
@given(grouped_rewards(), st.randoms(use_true_random=False))
def test_grpo_equivariant_under_permutation_within_group(kr, rnd):
    k, rewards = kr
    perm = []
    for g in range(len(rewards) // k):
        idx = list(range(g * k, (g + 1) * k))
        rnd.shuffle(idx)
        perm += idx
    r = torch.tensor(rewards)
    for estimator in ("grpo", "rloo", "dr_grpo"):
        torch.testing.assert_close(advantages.compute(r[perm], k, estimator),
                                   advantages.compute(r, k, estimator)[perm], atol=1e-5, rtol=0)


@settings(max_examples=60, deadline=None)
@given(grouped_rewards(), )
def test_rloo_sums_to_zero_and_grpo_zero_mean(kr):
    k, rewards = kr
    r = torch.tensor(rewards)
    rloo = advantages.compute(r, k, "rloo").view(-1, k)
    assert rloo.sum(dim=1).abs().max() < 1e-5
    grpo = advantages.compute(r, k, "grpo").view(-1, k)
    assert grpo.sum(dim=1).abs().max() < 1e-4
    # each non-constant group of grpo has Bessel std 1
    for row, adv in zip(r.view(-1, k), grpo, strict=True):
        if row.std() > 0:
            assert adv.std().item() == pytest.approx(1.0, abs=1e-4)
        else:
            assert (adv == 0).all()


@settings(max_examples=60, deadline=None)
@given(grouped_rewards(), st.floats(1.0, 10.0))
def test_clip_filter_like_weights_in_one_to_cap(kr, cap):
    k, rewards = kr
    w = advantages.clip_filter_like_weights(torch.tensor(rewards), k, cap=cap)
    assert w.shape == (len(rewards),)
    assert (w >= 1).all() and (w <= cap + 1e-6).all()
    # constant within a group
    assert (w.view(-1, k) == w.view(-1, k)[:, :1]).all()
