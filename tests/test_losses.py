"""Hand-derived values and gradients of every surrogate, the CPGD drift term, the reference-KL
estimators and every aggregation mode (docs/algorithms.md).

Expected numbers are written out by hand (closed forms with `math`), never produced by the
implementation. Gradients are autograd's d(loss)/d(logp) compared with the derivation in the comments.
Tensors are float64 so the tolerances can be tight.
"""

from __future__ import annotations

import math

import pytest
import torch

from eureka_kit.algos import losses
from eureka_kit.config import PRESETS, ConfigError

F64 = torch.float64
E = math.exp
LN = math.log


def t(values) -> torch.Tensor:
    return torch.tensor(values, dtype=F64)


def leaf(values) -> torch.Tensor:
    return torch.tensor(values, dtype=F64, requires_grad=True)


def assert_close(actual, expected, atol=1e-9):
    torch.testing.assert_close(torch.as_tensor(actual, dtype=F64), t(expected), atol=atol, rtol=0)


def surrogate_value_and_grad(fn, deltas, advs, **kwargs):
    """Per-token loss of `fn` and d(sum of loss)/d(delta) for a [1, n] row of tokens."""
    delta = leaf([deltas])
    loss, info = fn(delta, t([advs]), **kwargs)
    loss.sum().backward()
    return loss.detach()[0], delta.grad[0], {k: v[0].tolist() for k, v in info.items()}


# ---------------------------------------------------------------------------------------------
# Surrogates, token by token (docs/algorithms.md).
# eps_low = 0.2, eps_high = 0.28 (asymmetric, so swapping the sides changes the answer):
#   log-ratio bounds lo = ln 0.8 = -0.2231, hi = ln 1.28 = 0.2469; ratio bounds 0.8 and 1.28.
EL, EH = 0.2, 0.28


def test_pg_value_and_gradient():
    # loss = -A * delta, d/d(logp) = -A whatever the ratio (no clip, no ratio factor).
    value, grad, _ = surrogate_value_and_grad(losses.pg_loss, [0.1, 3.0, -2.0], [1.0, -2.0, 0.5])
    assert_close(value, [-0.1, 6.0, 1.0])
    assert_close(grad, [-1.0, 2.0, -0.5])


def test_cpg_value_and_gradient_on_every_region():
    deltas = [0.1, 0.3, -0.5, 0.23, -0.1, -0.3, LN(0.78), 3.0, 1.0]
    advs = [1.0, 1.0, 1.0, 1.0, -2.0, -2.0, -1.0, -2.0, 0.0]
    value, grad, info = surrogate_value_and_grad(losses.cpg_loss, deltas, advs, eps_low=EL, eps_high=EH)
    expected_value = [
        -0.1,                # A>0, delta <= hi: -A*delta
        -LN(1.28),           # A>0, delta = 0.3 > hi: -A*ln(1+eps_high), clipped
        0.5,                 # A>0, r < 1-eps: no lower clip for A>0, -A*delta
        -0.23,               # A>0, ln1.2 < delta=0.23 < ln1.28: unclipped only if eps_high (0.28) is the upper side
        -0.2,                # A<0, delta >= lo: -(-2)(-0.1)
        2 * LN(0.8),         # A<0, delta < lo: -A*ln(1-eps_low), clipped
        LN(0.8),             # A<0, delta = ln0.78 < ln0.8: clipped only if eps_low (0.2) is the lower side
        6.0,                 # A<0, r = e^3 huge: NO upper clip in CPG, -A*delta
        0.0,                 # A=0
    ]
    # d(-Phi)/d(logp) = -A where unclipped, 0 where clipped (no ratio factor anywhere).
    expected_grad = [-1.0, 0.0, -1.0, -1.0, 2.0, 0.0, 0.0, 2.0, 0.0]
    assert_close(value, expected_value)
    assert_close(grad, expected_grad)
    assert info["clipped_high"] == [False, True, False, False, False, False, False, False, False]
    assert info["clipped_low"] == [False, False, False, False, False, True, True, False, False]


def test_ppo_clip_value_and_gradient_asymmetric_eps():
    deltas = [0.1, 0.3, -0.5, LN(1.25), -0.1, -0.3, LN(0.78), 3.0]
    advs = [1.0, 1.0, 1.0, 1.0, -2.0, -2.0, -1.0, -2.0]
    value, grad, info = surrogate_value_and_grad(losses.ppo_clip_loss, deltas, advs, eps_low=EL, eps_high=EH)
    expected_value = [
        -E(0.1),         # A>0, r = 1.105 <= 1.28: -r*A
        -1.28,           # A>0, r = 1.350 > 1.28: -(1+eps_high)*A
        -E(-0.5),        # A>0, r = 0.607: min(rA, 0.8A) = rA
        -1.25,           # A>0, r = 1.25: unclipped only with eps_high = 0.28 on the upper side
        2 * E(-0.1),     # A<0, r = 0.905 >= 0.8: -rA
        1.6,             # A<0, r = 0.741 < 0.8: min(-1.48, -1.6) = -1.6 -> loss 1.6
        0.8,             # A<0, r = 0.78 < 0.8: clipped only with eps_low = 0.2 on the lower side
        2 * E(3.0),      # A<0, r = e^3, no dual clip: -rA, unbounded
    ]
    # d(-rA)/d(logp) = -A*r (the ratio factor), 0 where clipped.
    expected_grad = [-E(0.1), 0.0, -E(-0.5), -1.25, 2 * E(-0.1), 0.0, 0.0, 2 * E(3.0)]
    assert_close(value, expected_value)
    assert_close(grad, expected_grad)
    assert info["clipped_high"] == [False, True, False, False, False, False, False, False]
    assert info["clipped_low"] == [False, False, False, False, False, True, True, False]


def test_dual_clip_caps_negative_advantage_loss_above_c():
    deltas = [3.0, LN(2.5), 3.0, -0.3]
    advs = [-2.0, -2.0, 1.0, -2.0]
    value, grad, info = surrogate_value_and_grad(
        losses.ppo_clip_loss, deltas, advs, eps_low=EL, eps_high=EH, dual_clip=3.0)
    # A<0, r = e^3 > c=3: objective max(rA, cA) = cA = -6 -> loss 6, gradient 0.
    # A<0, r = 2.5 < c: unchanged PPO, loss -rA = 5, gradient -A r = 5.
    # A>0, r = e^3: dual clip does not apply; PPO upper clip -> loss -1.28, gradient 0.
    # A<0, r = 0.741 < 0.8: ordinary lower clip -> 1.6, gradient 0.
    assert_close(value, [6.0, 5.0, -1.28, 1.6])
    assert_close(grad, [0.0, 5.0, 0.0, 0.0])
    assert info["dual_clipped"] == [True, False, False, False]


def test_cispo_trl_absolute_cap():
    deltas = [0.1, 2.0, -1.0, 2.0]
    advs = [1.0, 1.0, -1.0, -1.0]
    value, grad, info = surrogate_value_and_grad(losses.cispo_loss, deltas, advs, cispo_cap=5.0)
    # loss = -sg(min(r, 5)) * A * delta; gradient -min(r, 5) * A (never zero, no lower bound).
    #   r = 1.105: weight 1.105;  r = e^2 = 7.39 -> 5;  r = e^-1 = 0.368 (NOT floored);  r = e^2 -> 5.
    assert_close(value, [-E(0.1) * 0.1, -5 * 2.0, -E(-1.0), 10.0])
    assert_close(grad, [-E(0.1), -5.0, E(-1.0), 5.0])
    # flags mark a weight held at the cap, whatever the sign of A; CISPO has no lower bound
    assert info["clipped_high"] == [False, True, False, True]
    assert info["clipped_low"] == [False, False, False, False]


def test_cispo_verl_one_plus_eps_form():
    deltas = [0.1, 2.0, -1.0, 0.5]
    advs = [1.0, 1.0, -1.0, -1.0]
    value, grad, _ = surrogate_value_and_grad(losses.cispo_verl_loss, deltas, advs, eps_low=EL, eps_high=EH)
    # weight = sg(clip(r, 0.8, 1.28)): 1.105 | 1.28 (r = 7.39) | 0.8 (r = 0.368, floored) | 1.28 (r = 1.65).
    # loss = -w * A * delta; gradient -w * A.
    assert_close(value, [-E(0.1) * 0.1, -1.28 * 2.0, -0.8, 1.28 * 0.5])
    assert_close(grad, [-E(0.1), -1.28, 0.8, 1.28])


# ---------------------------------------------------------------------------------------------
# GSPO and GSPO-token through policy_loss (sequence-level ratio needs the mask).
GSPO_MASK = [[1, 1, 1], [1, 1, 0], [1, 1, 0]]
GSPO_DELTA = [[0.1, 0.2, -0.05], [0.4, 0.6, 7.0], [0.5, 0.5, -9.0]]  # pad entries must not matter
GSPO_ADV = [1.0, -1.0, 2.0]


def _gspo(surrogate, adv=GSPO_ADV, aggregation="seq-mean-token-mean"):
    old = t([[-1.0, -2.0, -0.5], [-1.5, -0.7, -3.0], [-0.2, -0.9, -1.0]])
    logp = (old + t(GSPO_DELTA)).detach().requires_grad_()
    loss, stats = losses.policy_loss(logp, old, t(adv), t(GSPO_MASK), preset="gspo", surrogate=surrogate,
                                     eps_low=EL, eps_high=EH, aggregation=aggregation)
    loss.backward()
    return loss.detach(), logp.grad, stats


@pytest.mark.parametrize("surrogate", ["gspo", "gspo_token"])
def test_gspo_value_and_gradient(surrogate):
    loss, grad, _ = _gspo(surrogate)
    # s_k = exp(mean of valid delta):
    #   s0 = exp(0.25/3) = 1.0869, A0 = +1 <= 1.28 -> unclipped, loss_0 = -s0.
    #   s1 = exp(0.5) = 1.6487, A1 = -1: A<0 only clipped below 0.8 -> unclipped, loss_1 = +s1.
    #   s2 = exp(0.5) = 1.6487, A2 = +2 > 1.28 -> clipped, loss_2 = -2 * 1.28, gradient 0.
    s0, s1 = E(0.25 / 3), E(0.5)
    assert_close(loss, (-s0 + s1 - 2 * 1.28) / 3)
    # seq-mean-token-mean = (1/B) sum_k loss_k; d loss_k / d logp_{k,t} = -A_k s_k / |y_k|.
    expected = [[-s0 / 9] * 3, [s1 / 6, s1 / 6, 0.0], [0.0, 0.0, 0.0]]
    assert_close(grad, expected)


def test_gspo_equals_gspo_token_with_constant_advantage():
    for adv in (GSPO_ADV, [[1.0] * 3, [-1.0] * 3, [2.0] * 3]):
        for aggregation in ("seq-mean-token-mean", "token-mean"):
            loss_a, grad_a, _ = _gspo("gspo", adv, aggregation)
            loss_b, grad_b, _ = _gspo("gspo_token", adv, aggregation)
            assert_close(loss_a, loss_b.item())
            assert_close(grad_a, grad_b.tolist())


# ---------------------------------------------------------------------------------------------
# eps_low >= 1: no lower clip (as verl and TRL allow; CS336's GRPO tests use a clip range of 10).
# Tokens: r = 0.05, far below 1, with A = -2 (the lower side) | r = 0.05 with A = +1 (never clipped
# below) | r = 1 with A = 0. eps_high = 0.28 throughout.
R = 0.05
LOW_DELTAS, LOW_ADVS = [LN(R), LN(R), 0.0], [-2.0, 1.0, 0.0]
LOWER_SIDE = {  # surrogate: {eps_low: (value, gradient, clipped_low)}
    "ppo_clip": {
        # r = 0.05 < 0.8, A < 0: loss -A(1-eps_low) = 1.6, gradient 0 | A > 0: -A r, gradient -A r
        0.2: ([1.6, -R, 0.0], [0.0, -R, 0.0], [True, False, False]),
        # no floor: loss -A r = 0.1, gradient -A r = 0.1 (the plain PG gradient times r)
        "none": ([2 * R, -R, 0.0], [2 * R, -R, 0.0], [False, False, False]),
    },
    "cpg": {
        # delta = ln 0.05 < ln 0.8, A < 0: loss -A ln(1-eps_low), gradient 0 | A > 0: -A delta, gradient -A
        0.2: ([2 * LN(0.8), -LN(R), 0.0], [0.0, -1.0, 0.0], [True, False, False]),
        # no floor: loss -A delta = 2 ln 0.05, gradient -A = 2
        "none": ([2 * LN(R), -LN(R), 0.0], [2.0, -1.0, 0.0], [False, False, False]),
    },
    "cispo_verl": {
        # weight sg(clip(r, 0.8, 1.28)) = 0.8 for both r = 0.05 tokens (any sign of A); loss -w A delta,
        # gradient -w A: CISPO keeps the gradient, the floor only raises the weight
        0.2: ([1.6 * LN(R), -0.8 * LN(R), 0.0], [1.6, -0.8, 0.0], [True, True, False]),
        # no floor: weight r = 0.05
        "none": ([2 * R * LN(R), -R * LN(R), 0.0], [2 * R, -R, 0.0], [False, False, False]),
    },
}
FN = {"ppo_clip": losses.ppo_clip_loss, "cpg": losses.cpg_loss, "cispo_verl": losses.cispo_verl_loss}


def test_clip_floors():
    assert losses.ratio_floor(0.2) == pytest.approx(0.8) and losses.log_ratio_floor(0.2) == pytest.approx(LN(0.8))
    for eps_low in (1.0, 10.0, math.inf):
        assert losses.ratio_floor(eps_low) == 0.0 and losses.log_ratio_floor(eps_low) == -math.inf


@pytest.mark.parametrize("eps_low", [0.2, 1.0, 10.0])
@pytest.mark.parametrize("surrogate", list(LOWER_SIDE))
def test_eps_low_at_least_one_means_no_lower_clip(surrogate, eps_low):
    value, grad, info = surrogate_value_and_grad(FN[surrogate], LOW_DELTAS, LOW_ADVS, eps_low=eps_low, eps_high=EH)
    expected_value, expected_grad, expected_low = LOWER_SIDE[surrogate][eps_low if eps_low < 1 else "none"]
    assert torch.isfinite(value).all() and torch.isfinite(grad).all()
    assert_close(value, expected_value)
    assert_close(grad, expected_grad)
    assert info["clipped_low"] == expected_low


@pytest.mark.parametrize("surrogate", ["gspo", "gspo_token", "ppo_clip", "cpg", "cispo_verl"])
def test_eps_low_at_least_one_through_policy_loss(surrogate):
    # One response, deltas ln 0.1 and ln 0.025: both token ratios and s = exp(mean delta) = 0.05 are far
    # below 0.8, A = -2, one response so seq-mean-token-mean = (1/2) sum over its two tokens.
    old = t([[-1.0, -2.0]])
    # GSPO: clipped, loss -A(1-eps_low) = 1.6 and gradient 0; unclipped, loss -A s = 0.1 and
    # d/d logp_t = -A s / |y| = 0.05 per token.
    gspo = {0.2: (1.6, [[0.0, 0.0]]), 10.0: (2 * R, [[R, R]])}
    for eps_low, clipfrac_low in ((0.2, 1.0), (10.0, 0.0)):
        logp = (old + t([[LN(0.1), LN(0.025)]])).detach().requires_grad_()
        loss, stats = losses.policy_loss(logp, old, t([-2.0]), t([[1, 1]]), preset="grpo", surrogate=surrogate,
                                         eps_low=eps_low, eps_high=EH, aggregation="seq-mean-token-mean")
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(logp.grad).all()
        assert stats["policy/clipfrac_low"] == clipfrac_low
        if surrogate.startswith("gspo"):
            assert_close(loss, gspo[eps_low][0])
            assert_close(logp.grad, gspo[eps_low][1])


# ---------------------------------------------------------------------------------------------
# CPGD drift term (§1.4): E = min(sg(r) - 1, c) * logp, gradient min(r - 1, c).


def test_drift_value_and_gradient():
    old = t([[-1.0, -1.0, -3.0, -1.0, -2.0]])
    delta = [0.0, 0.5, 2.0, -1.0, LN(3.0)]
    logp = (old + t([delta])).detach().requires_grad_()
    value = losses.drift_loss(logp, old, drift_clip=2.0)
    value.sum().backward()
    # logp = [-1, -0.5, -1, -2, -2 + ln3]; coef = min(r - 1, 2): [0, e^.5 - 1, 2 (r = e^2 capped), e^-1 - 1, 2].
    coef = [0.0, E(0.5) - 1, 2.0, E(-1.0) - 1, 2.0]
    lp = [-1.0, -0.5, -1.0, -2.0, -2.0 + LN(3.0)]
    assert_close(value[0], [c * x for c, x in zip(coef, lp, strict=True)])  # value can be negative: not a KL
    assert value[0, 1] < 0
    assert_close(logp.grad[0], coef)


def test_drift_acts_where_clip_zeroes_surrogate_and_is_capped():
    # One valid token each, A = +1, eps = 0.2: delta = 0.5 and 2.0 are both above ln 1.2 -> CPG gradient 0.
    old = t([[-1.0], [-3.0]])
    logp = (old + t([[0.5], [2.0]])).detach().requires_grad_()
    adv = t([1.0, 1.0])
    loss, _ = losses.policy_loss(logp, old, adv, torch.ones(2, 1, dtype=F64), preset="cpgd",
                                 aggregation="seq-mean-token-sum", group_size=2)
    loss.backward()
    # seq-mean-token-sum weight 1/2; drift gradient alpha * min(r - 1, c), alpha = 0.01, c = 2:
    #   r = e^0.5: 0.01 * 0.6487 / 2;   r = e^2 = 7.39 > 1 + c: capped at 0.01 * 2 / 2 (k3 would give 0.01*6.39/2).
    assert_close(logp.grad, [[0.01 * (E(0.5) - 1) / 2], [0.01 * 2.0 / 2]])
    # without the drift the same tokens get no gradient at all
    logp.grad = None
    loss, _ = losses.policy_loss(logp, old, adv, torch.ones(2, 1, dtype=F64), preset="cpg",
                                 aggregation="seq-mean-token-sum", group_size=2)
    loss.backward()
    assert_close(logp.grad, [[0.0], [0.0]])


def test_cpgd_full_loss_by_hand():
    # preset cpgd: CPG eps 0.2/0.2, alpha 0.01, c 2, seq-mean-token-mean. Row 0 has 3 tokens, row 1 has 1.
    old = t([[-1.0, -2.0, -1.5], [-0.5, -4.0, -4.0]])
    delta = t([[0.1, 0.5, -0.2], [-0.3, 1e4, -1e4]])
    mask = t([[1, 1, 1], [1, 0, 0]])
    logp = (old + delta).detach().requires_grad_()
    loss, stats = losses.policy_loss(logp, old, t([1.0, -1.0]), mask, preset="cpgd", group_size=2,
                                     aggregation="seq-mean-token-mean")  # MM-EUREKA code's aggregation (D2)
    loss.backward()
    # Row 0, A = +1, hi = ln 1.2: delta .1 (Phi .1, grad -1) | .5 clipped (Phi ln1.2, grad 0) | -.2 (Phi -.2, grad -1)
    # Row 1, A = -1, lo = ln .8: delta -.3 < lo, clipped: Phi = -ln .8, grad 0.
    surrogate = 0.5 * (-(0.1 + LN(1.2) - 0.2) / 3 + LN(0.8))
    # Drift E = (r - 1) * logp per token (all r - 1 < c = 2); logp row 0 = [-.9, -1.5, -1.7], row 1 = [-.8].
    drift_row0 = ((E(0.1) - 1) * -0.9 + (E(0.5) - 1) * -1.5 + (E(-0.2) - 1) * -1.7) / 3
    drift_row1 = (E(-0.3) - 1) * -0.8
    drift = 0.5 * (drift_row0 + drift_row1)
    assert_close(loss, surrogate + 0.01 * drift)
    assert stats["loss/policy"] == pytest.approx(surrogate, abs=1e-12)
    assert stats["loss/drift_surrogate"] == pytest.approx(drift, abs=1e-12)
    # Gradient: weight 1/(B n_k) = 1/6 (row 0), 1/2 (row 1), times (surrogate grad + 0.01 (r - 1)).
    expected = [[(-1 + 0.01 * (E(0.1) - 1)) / 6, 0.01 * (E(0.5) - 1) / 6, (-1 + 0.01 * (E(-0.2) - 1)) / 6],
                [0.01 * (E(-0.3) - 1) / 2, 0.0, 0.0]]
    assert_close(logp.grad, expected)


# ---------------------------------------------------------------------------------------------
# Reference KL estimators (§2.10a): u = logp - ref_logp.


@pytest.mark.parametrize("estimator, values, grads", [
    ("k1", [0.5, -0.3, 0.0], [1.0, 1.0, 1.0]),
    ("k2", [0.125, 0.045, 0.0], [0.5, -0.3, 0.0]),
    ("k3", [E(-0.5) - 1 + 0.5, E(0.3) - 1 - 0.3, 0.0], [1 - E(-0.5), 1 - E(0.3), 0.0]),
])
def test_kl_estimators(estimator, values, grads):
    ref = t([[-1.0, -2.0, -0.7]])
    logp = (ref + t([[0.5, -0.3, 0.0]])).detach().requires_grad_()
    value = losses.kl_penalty(logp, ref, estimator)
    value.sum().backward()
    assert_close(value[0], values)
    assert_close(logp.grad[0], grads)
    if estimator == "k3":
        assert (value >= 0).all()


@pytest.mark.parametrize("estimator", ["k1", "k2", "k3"])
def test_kl_term_through_policy_loss(estimator):
    # A = 0 makes the surrogate vanish; kl_coef = 0.5, token-mean over 3 valid tokens of 4.
    ref = t([[-1.0, -2.0], [-0.7, -5.0]])
    u = [[0.5, -0.3], [0.2, 123.0]]  # last token masked
    logp = (ref + t(u)).detach().requires_grad_()
    mask = t([[1, 1], [1, 0]])
    loss, stats = losses.policy_loss(logp, logp.detach().clone(), t([0.0, 0.0]), mask, preset="grpo_kl",
                                     ref_logp=ref, kl_coef=0.5, kl_estimator=estimator,
                                     aggregation="token-mean", group_size=2)
    loss.backward()
    per_token = {"k1": lambda x: x, "k2": lambda x: x * x / 2, "k3": lambda x: E(-x) - 1 + x}[estimator]
    dper_token = {"k1": lambda x: 1.0, "k2": lambda x: x, "k3": lambda x: 1 - E(-x)}[estimator]
    valid = [0.5, -0.3, 0.2]
    assert_close(loss, 0.5 * sum(per_token(x) for x in valid) / 3)
    assert stats["loss/kl"] == pytest.approx(sum(per_token(x) for x in valid) / 3, abs=1e-12)
    assert_close(logp.grad, [[0.5 * dper_token(0.5) / 3, 0.5 * dper_token(-0.3) / 3],
                             [0.5 * dper_token(0.2) / 3, 0.0]])
    assert stats["kl/ref_k1"] == pytest.approx(0.4 / 3)
    assert stats["kl/ref_k3"] == pytest.approx(sum(E(-x) - 1 + x for x in valid) / 3)


def test_kl_coef_without_ref_logp_raises():
    x = torch.zeros(2, 2, dtype=F64, requires_grad=True)
    with pytest.raises(ValueError, match="ref_logp"):
        losses.policy_loss(x, x.detach(), t([1.0, -1.0]), torch.ones(2, 2), preset="grpo_kl", group_size=2)


def test_unknown_kl_estimator_raises():
    with pytest.raises(ConfigError, match="kl_estimator.*k1, k2, k3"):
        losses.kl_penalty(torch.zeros(1, 1), torch.zeros(1, 1), "k4")


# ---------------------------------------------------------------------------------------------
# Aggregation (§2.9). Unequal lengths 3, 2, 1, 3 (B = 4, 9 tokens) make every mode different.
AGG_MASK = [[1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 1]]
AGG_LOSS = [[1.0, 2.0, 3.0], [4.0, 5.0, 99.0], [6.0, 99.0, 99.0], [7.0, 8.0, 9.0]]  # 99 = padding


def _row_weights(w):
    return [[w[k] * m for m in row] for k, row in enumerate(AGG_MASK)]


@pytest.mark.parametrize("mode, value, weights", [
    # sum of valid = 45 over 9 tokens
    ("token-mean", 45 / 9, [1 / 9] * 4),
    # row means 2, 4.5, 6, 8 -> mean 5.125; weight 1/(B n_k)
    ("seq-mean-token-mean", (2 + 4.5 + 6 + 8) / 4, [1 / 12, 1 / 8, 1 / 4, 1 / 12]),
    # row sums 6, 9, 6, 24 -> mean 11.25; weight 1/B
    ("seq-mean-token-sum", 45 / 4, [1 / 4] * 4),
    # Dr. GRPO: sum / (B * L) with L = max_len = 5 (not the padded 3, not the token count)
    ("seq-mean-token-sum-norm", 45 / (4 * 5), [1 / 20] * 4),
    # groups of 2: (6 + 9) / 5 = 3 and (6 + 24) / 4 = 7.5 -> 5.25; weight 1/(#groups * group tokens)
    ("group-token-mean", (3 + 7.5) / 2, [1 / 10, 1 / 10, 1 / 8, 1 / 8]),
])
def test_aggregation_value_and_gradient(mode, value, weights):
    per_token = leaf(AGG_LOSS)
    out = losses.aggregate(per_token, t(AGG_MASK), mode, group_size=2, max_len=5)
    out.backward()
    assert_close(out, value)
    assert_close(per_token.grad, _row_weights(weights))


def test_aggregation_errors():
    x, m = t(AGG_LOSS), t(AGG_MASK)
    with pytest.raises(ConfigError, match="aggregation.*token-mean.*group-token-mean"):
        losses.aggregate(x, m, "mean")
    with pytest.raises(ConfigError, match="group_size"):
        losses.aggregate(x, m, "group-token-mean", group_size=3)
    with pytest.raises(ConfigError, match="max_len"):
        losses.aggregate(x, m, "seq-mean-token-sum-norm")


def test_dr_grpo_preset_divides_by_batch_times_max_len():
    # PG-like at r = 1: PPO loss per token = -A; Dr. GRPO sums valid tokens and divides by B * L.
    mask = t(AGG_MASK)
    logp = torch.full((4, 3), -1.0, dtype=F64, requires_grad=True)
    adv = t([1.0, -1.0, 0.5, 2.0])
    loss, _ = losses.policy_loss(logp, logp.detach(), adv, mask, preset="dr_grpo", max_len=7, group_size=2)
    loss.backward()
    # sum_k n_k (-A_k) = -(3*1 + 2*(-1) + 1*0.5 + 3*2) = -7.5; / (4 * 7)
    assert_close(loss, -7.5 / 28)
    assert_close(logp.grad, [[-a / 28 * m for m in row] for a, row in zip([1.0, -1.0, 0.5, 2.0], AGG_MASK, strict=True)])


# ---------------------------------------------------------------------------------------------
# Identities.
CLIPPED = [
    dict(preset="cpg"), dict(preset="cpgd"), dict(preset="grpo"), dict(preset="grpo_dual_clip"),
    dict(preset="dapo"), dict(preset="cispo"), dict(preset="grpo", surrogate="cispo_verl"),
    dict(preset="gspo"), dict(preset="gspo", surrogate="gspo_token"),
]
MODE_WEIGHTS = {  # per-row aggregation weights for AGG_MASK (lengths 3, 2, 1, 3), group_size 2, max_len 20
    "token-mean": [1 / 9] * 4,
    "seq-mean-token-mean": [1 / 12, 1 / 8, 1 / 4, 1 / 12],
    "seq-mean-token-sum": [1 / 4] * 4,
    "seq-mean-token-sum-norm": [1 / 80] * 4,
    "group-token-mean": [1 / 10, 1 / 10, 1 / 8, 1 / 8],
}


@pytest.mark.parametrize("mode", list(MODE_WEIGHTS))
@pytest.mark.parametrize("choice", CLIPPED, ids=lambda c: "-".join(c.values()))
def test_gradient_at_ratio_one_is_minus_adv_times_weight(choice, mode):
    # r = 1 (first minibatch): every clipped surrogate has gradient -A * grad(logp), the drift 0.
    gen = torch.Generator().manual_seed(0)
    old = -torch.rand(4, 3, generator=gen, dtype=F64) * 3
    logp = old.clone().requires_grad_()
    adv = [1.5, -0.5, -2.0, 0.25]
    loss, stats = losses.policy_loss(logp, old, t(adv), t(AGG_MASK), aggregation=mode, group_size=2,
                                     max_len=20, **choice)
    loss.backward()
    expected = [[-a * w * m for m in row] for a, w, row in zip(adv, MODE_WEIGHTS[mode], AGG_MASK, strict=True)]
    assert_close(logp.grad, expected)
    assert stats["policy/clipfrac"] == 0.0


@pytest.mark.parametrize("preset", ["pg", "cpg", "cpgd", "cispo"])
def test_log_ratio_form_value_is_zero_at_ratio_one(preset):
    # D1: value uses delta, not logp. With old_logp = -3 the code's -A*logp form would give 3A != 0.
    logp = torch.full((2, 2), -3.0, dtype=F64, requires_grad=True)
    loss, _ = losses.policy_loss(logp, logp.detach(), t([1.0, -2.0]), torch.ones(2, 2), preset=preset,
                                 group_size=2)
    assert loss.item() == 0.0


def test_ppo_gradient_carries_ratio_cpg_does_not():
    # A = -1, delta = 1 (r = e): both unclipped (A<0 is only clipped below 1 - eps).
    old = t([[-2.0]])
    for preset, expected in (("grpo", E(1.0)), ("cpg", 1.0), ("pg", 1.0)):
        logp = (old + 1.0).detach().requires_grad_()
        losses.policy_loss(logp, old, t([-1.0]), torch.ones(1, 1), preset=preset,
                           aggregation="token-mean")[0].backward()
        assert_close(logp.grad, [[expected]])


def test_negative_advantage_huge_ratio_cpg_vs_dual_clip():
    # A = -1, r = e^4 = 54.6 > c = 3.
    old = t([[-6.0]])
    grads = {}
    for preset in ("cpg", "grpo_dual_clip", "grpo"):
        logp = (old + 4.0).detach().requires_grad_()
        losses.policy_loss(logp, old, t([-1.0]), torch.ones(1, 1), preset=preset,
                           aggregation="token-mean")[0].backward()
        grads[preset] = logp.grad.item()
    assert grads["cpg"] == pytest.approx(1.0)            # no upper clip for A<0, no r factor: -A
    assert grads["grpo_dual_clip"] == 0.0                 # dual clip: zero gradient beyond c
    assert grads["grpo"] == pytest.approx(E(4.0))         # plain PPO: -A r


BAD_PAD = [float("-inf"), 1e4, float("nan"), -1e4]


@pytest.mark.parametrize("preset", list(PRESETS))
def test_masked_tokens_get_exactly_zero_gradient(preset):
    # Valid tokens off-policy; padding holds -inf / nan / +-1e4 in logp, old_logp and ref_logp.
    mask = t(AGG_MASK)
    gen = torch.Generator().manual_seed(1)
    old_clean = -torch.rand(4, 3, generator=gen, dtype=F64) * 2
    delta = (torch.rand(4, 3, generator=gen, dtype=F64) - 0.5)
    ref_clean = -torch.rand(4, 3, generator=gen, dtype=F64) * 2
    pads = [(1, 2), (2, 1), (2, 2)]

    def run(dirty):
        old, ref, lp = old_clean.clone(), ref_clean.clone(), (old_clean + delta).clone()
        if dirty:
            for j, (b, k) in enumerate(pads):
                lp[b, k], old[b, k], ref[b, k] = BAD_PAD[j], BAD_PAD[j + 1], BAD_PAD[j - 1]
        lp.requires_grad_()
        loss, stats = losses.policy_loss(lp, old, t([1.0, -1.0, 0.5, -0.5]), mask, preset=preset,
                                         ref_logp=ref, group_size=2, max_len=20)
        loss.backward()
        return loss, lp.grad, stats

    loss_clean, grad_clean, _ = run(False)
    loss, grad, stats = run(True)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
    for b, k in pads:
        assert grad[b, k].item() == 0.0
    assert_close(loss, loss_clean.item())
    assert_close(grad, grad_clean.tolist())
    assert all(math.isfinite(v) for v in stats.values())


@pytest.mark.parametrize("preset", list(PRESETS))
def test_every_preset_gives_finite_loss_and_gradient(preset):
    gen = torch.Generator().manual_seed(2)
    old = -torch.rand(4, 3, generator=gen) * 2
    logp = (old + 0.3 * torch.randn(4, 3, generator=gen)).requires_grad_()
    loss, stats = losses.policy_loss(logp, old, torch.randn(4, generator=gen), t(AGG_MASK).float(),
                                     preset=preset, ref_logp=old - 0.1, group_size=2)
    loss.backward()
    assert loss.dim() == 0 and torch.isfinite(loss)
    assert torch.isfinite(logp.grad).all() and logp.grad.abs().sum() > 0
    assert stats["loss/total"] == pytest.approx(loss.item())


def test_per_token_adv_equals_broadcast_adv():
    old = t([[-1.0, -2.0, -0.5], [-1.0, -1.0, -1.0]])
    delta = t([[0.3, -0.1, 0.05], [-0.4, 0.2, 0.0]])
    grads = []
    for adv in (t([1.0, -1.0]), t([[1.0] * 3, [-1.0] * 3])):
        logp = (old + delta).detach().requires_grad_()
        loss, _ = losses.policy_loss(logp, old, adv, t([[1, 1, 1], [1, 1, 0]]), preset="cpgd", group_size=2)
        loss.backward()
        grads.append((loss.item(), logp.grad))
    assert grads[0][0] == pytest.approx(grads[1][0], abs=1e-12)
    assert_close(grads[0][1], grads[1][1].tolist())


# ---------------------------------------------------------------------------------------------
# Stats from policy_loss: clip fractions by side against hand counts.


def _clip_batch(preset, **overrides):
    old = t([[-1.0, -1.0, -1.0], [-1.0, -1.0, -1.0]])
    # Row 0 (A = +1): delta .5 (r 1.65, clipped high), .1 (no), .3 (r 1.35, clipped high).
    # Row 1 (A = -1): delta -.5 (r .61, clipped low), 2.0 (r 7.4: CPG no clip; dual clip > 3), pad -5 (ignored).
    delta = t([[0.5, 0.1, 0.3], [-0.5, 2.0, -5.0]])
    logp = (old + delta).detach().requires_grad_()
    return losses.policy_loss(logp, old, t([1.0, -1.0]), t([[1, 1, 1], [1, 1, 0]]), preset=preset,
                              group_size=2, **overrides)[1]


def test_stats_keys_and_clip_fractions_cpg():
    stats = _clip_batch("cpgd")
    expected_keys = {"loss/policy", "loss/drift_surrogate", "loss/total", "policy/num_tokens",
                     "policy/ratio_mean", "policy/ratio_min", "policy/ratio_max", "policy/log_ratio_abs_max",
                     "policy/ratio_tail_frac", "policy/approx_kl", "policy/clipfrac_low", "policy/clipfrac_high",
                     "policy/clipfrac", "drift/coef_mean", "drift/capped_frac", "adv/token_mean",
                     "policy/ratio_p0_1", "policy/ratio_p1", "policy/ratio_p50", "policy/ratio_p99",
                     "policy/ratio_p99_9"}
    assert expected_keys <= set(stats)
    assert not any("kl" in k for k in stats if "drift" in k)  # the drift surrogate is never logged as a KL
    assert stats["policy/num_tokens"] == 5
    assert stats["policy/clipfrac_high"] == pytest.approx(2 / 5)
    assert stats["policy/clipfrac_low"] == pytest.approx(1 / 5)
    assert stats["policy/clipfrac"] == pytest.approx(3 / 5)
    deltas = [0.5, 0.1, 0.3, -0.5, 2.0]
    assert stats["policy/approx_kl"] == pytest.approx(sum(E(d) - 1 - d for d in deltas) / 5)
    assert stats["policy/ratio_max"] == pytest.approx(E(2.0))
    # drift coef min(r - 1, 2): r = e^2 is capped -> 1 of 5
    assert stats["drift/capped_frac"] == pytest.approx(1 / 5)
    assert stats["drift/coef_mean"] == pytest.approx((E(0.5) + E(0.1) + E(0.3) + E(-0.5) - 4 + 2) / 5)
    assert stats["adv/token_mean"] == pytest.approx((3 - 2) / 5)


def test_stats_clip_fractions_dual_clip():
    stats = _clip_batch("grpo_dual_clip")
    assert stats["policy/clipfrac_high"] == pytest.approx(2 / 5)
    assert stats["policy/clipfrac_low"] == pytest.approx(1 / 5)
    assert stats["policy/dual_clipfrac"] == pytest.approx(1 / 5)
    assert "loss/drift_surrogate" not in _clip_batch("grpo")  # drift off in grpo


def test_unknown_override_raises():
    x = torch.zeros(2, 2, requires_grad=True)
    with pytest.raises(ConfigError, match="unknown RunConfig field"):
        losses.policy_loss(x, x.detach(), torch.ones(2), torch.ones(2, 2), eps=0.2)
