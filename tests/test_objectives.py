"""Hand-derived values and gradients of the post-CPGD objectives (docs/algorithms.md §3.15-3.20): SAPO, GMPO,
Clip-Cov, KL-Cov, DPPO (binary TV) and LUSPO, their on-policy identities, and two RL steps of each preset.

As in test_losses.py: expected numbers are closed forms written with `math`, never produced by the
implementation; gradients are autograd's d(loss)/d(logp); float64 so the tolerances can be tight.
"""

from __future__ import annotations

import inspect
import math

import pytest
import torch

from eureka_kit.algos import losses
from eureka_kit.config import ConfigError, RunConfig

F64 = torch.float64
E = math.exp
LN = math.log
NEW_PRESETS = ["sapo", "gmpo", "clip_cov", "kl_cov", "dppo_tv", "luspo"]


def t(values) -> torch.Tensor:
    return torch.tensor(values, dtype=F64)


def assert_close(actual, expected, atol=1e-9):
    torch.testing.assert_close(torch.as_tensor(actual, dtype=F64), t(expected), atol=atol, rtol=0)


def sig(x: float) -> float:
    return 1 / (1 + E(-x))


def dsig(x: float) -> float:
    return sig(x) * (1 - sig(x))


def per_token(fn, logp, old, adv, mask=None, **kwargs):
    """Per-token loss of `fn` ([B, T] inputs), d(sum of loss)/d(logp), and the info masks as lists."""
    lp = t(logp).requires_grad_()
    extra = dict(kwargs)
    if mask is not None:
        extra["mask"] = t(mask)
    if "logp" in inspect.signature(fn).parameters:
        extra["logp"] = lp
    loss, info = fn(lp - t(old), t(adv), **extra)
    loss.sum().backward()
    return loss.detach(), lp.grad, {k: v.tolist() for k, v in info.items()}


def through_policy_loss(preset, logp, old, adv, mask, **overrides):
    lp = t(logp).requires_grad_()
    loss, stats = losses.policy_loss(lp, t(old), t(adv), t(mask), preset=preset, **overrides)
    loss.backward()
    return loss.detach(), lp.grad, stats


# ---------------------------------------------------------------------------------------------
# SAPO: loss = -(4/tau) sigmoid(tau (r - 1)) A, tau = 1.0 (A > 0) | 1.05 (A <= 0).
# Gradient d/d(logp) = -(4/tau) * tau * sigmoid'(tau (r - 1)) * r * A = -4 sigmoid'(.) r A; at r = 1: -A.


def test_sapo_value_and_gradient():
    deltas = [0.0, 0.0, 0.5, -0.5, LN(3.0)]
    advs = [1.0, -2.0, 1.0, -1.0, 0.5]
    old = [-1.0, -2.0, -0.5, -1.5, -3.0]
    logp = [o + d for o, d in zip(old, deltas, strict=True)]
    value, grad, info = per_token(losses.sapo_loss, [logp], [old], [advs], sapo_tau_pos=1.0, sapo_tau_neg=1.05)
    x2, x3 = E(0.5) - 1, 1.05 * (E(-0.5) - 1)
    expected_value = [
        -4 * 0.5 * 1.0,                # r = 1, A > 0, tau 1: -(4/1) * 1/2 * 1 = -2 (not 0: the gate's value)
        -(4 / 1.05) * 0.5 * -2.0,      # r = 1, A < 0, tau 1.05
        -4 * sig(x2),                  # r = e^0.5, A = 1
        (4 / 1.05) * sig(x3),          # r = e^-0.5, A = -1, tau 1.05
        -4 * sig(2.0) * 0.5,           # r = 3, A = 0.5: sigmoid(1 * (3 - 1))
    ]
    expected_grad = [
        -1.0,                           # on-policy: -A, whatever tau
        2.0,                            # on-policy: -A = 2 (tau_neg cancels: (4/tau) * tau * 1/4)
        -4 * dsig(x2) * E(0.5),
        4 * dsig(x3) * E(-0.5),         # -4 sigmoid'(x) r A with A = -1
        -4 * dsig(2.0) * 3.0 * 0.5,     # soft decay: far smaller than PPO's unclipped -r A = -1.5
    ]
    assert_close(value[0], expected_value)
    assert_close(grad[0], expected_grad)
    assert info == {}  # no gradient is ever cut


def test_sapo_negative_advantages_decay_faster_than_positive():
    # Same |A| and r = 2: tau_neg = 1.05 > tau_pos = 1 gives the smaller gradient magnitude to A < 0.
    _, grad, _ = per_token(losses.sapo_loss, [[LN(2.0), LN(2.0)]], [[0.0, 0.0]], [[1.0, -1.0]],
                           sapo_tau_pos=1.0, sapo_tau_neg=1.05)
    assert_close(grad[0], [-4 * dsig(1.0) * 2, 4 * dsig(1.05) * 2])
    assert abs(grad[0, 1]) < abs(grad[0, 0])


# ---------------------------------------------------------------------------------------------
# GMPO: per response, u_t = s min(s delta_t, s clip(delta_t, -0.4, 0.4)), loss_k = -A_k exp(mean_t u_t).


def test_gmpo_value_and_gradient_with_clipped_tokens():
    old = [[-1.0, -2.0, -0.5], [-1.5, -0.7, -3.0]]
    delta = [[0.1, 0.6, 0.0], [-0.6, 0.6, 9.0]]  # row 1's last entry is padding
    mask = [[1, 1, 0], [1, 1, 0]]
    logp = [[o + d for o, d in zip(ro, rd, strict=True)] for ro, rd in zip(old, delta, strict=True)]
    loss, grad, stats = through_policy_loss("gmpo", logp, old, [1.0, -1.0], mask)
    # Row 0, A = +1: delta 0.6 > 0.4 is held at 0.4 (clipped_high, no gradient); mean u = (0.1 + 0.4)/2 = 0.25.
    # Row 1, A = -1: delta -0.6 < -0.4 is held at -0.4 (clipped_low); delta 0.6 is NOT clipped for A < 0
    #   (one-sided, like PPO): mean u = (-0.4 + 0.6)/2 = 0.1.
    loss0, loss1 = -E(0.25), E(0.1)
    assert_close(loss, (loss0 + loss1) / 2)  # seq-mean-token-mean of a broadcast response loss: mean over responses
    # d loss_k / d logp_t = -A_k exp(mean u) / n_k for an unclipped token; times 1/B = 1/2.
    assert_close(grad, [[-E(0.25) / 4, 0.0, 0.0], [0.0, E(0.1) / 4, 0.0]])
    assert stats["policy/clipfrac_high"] == pytest.approx(1 / 4)
    assert stats["policy/clipfrac_low"] == pytest.approx(1 / 4)


def test_gmpo_is_a_geometric_mean_of_token_ratios():
    # Unclipped (eps large): exp(mean delta) = (prod r_t)^(1/n), here (2 * 0.5 * 8)^(1/3) = 2.
    deltas = [[LN(2.0), LN(0.5), LN(8.0)]]
    value, _, _ = per_token(losses.gmpo_loss, deltas, [[0.0] * 3], [[1.0] * 3], mask=[[1, 1, 1]],
                            eps_low=10.0, eps_high=10.0)
    assert_close(value[0], [-2.0] * 3)


# ---------------------------------------------------------------------------------------------
# Clip-Cov and KL-Cov: Cov_t = (logp_t - mean logp)(A_t - mean A) over the valid tokens.
# logp = [[-1, -4], [-5, -2]]: mean -3, logp - mean = [[2, -1], [-2, 1]]; A = +1 | -1: mean 0.
# Cov = [[2, -1], [2, -1]].
COV_LOGP = [[-1.0, -4.0], [-5.0, -2.0]]
COV_DELTA = [[0.5, 0.1], [-0.1, 0.3]]
COV_OLD = [[lp - d for lp, d in zip(rl, rd, strict=True)] for rl, rd in zip(COV_LOGP, COV_DELTA, strict=True)]
COV_ADV = [[1.0, 1.0], [-1.0, -1.0]]
COV_MASK = [[1, 1], [1, 1]]


@pytest.mark.parametrize("ratio", [2e-4, 0.5])
def test_clip_cov_detaches_the_covariance_token(ratio):
    value, grad, info = per_token(losses.clip_cov_loss, COV_LOGP, COV_OLD, COV_ADV, mask=COV_MASK, eps_low=0.2,
                                  eps_high=0.2, clip_cov_ratio=ratio, clip_cov_lb=1.0, clip_cov_ub=5.0)
    # Candidates: Cov in (1, 5) and not PPO-clipped. (0,0) has Cov 2 but r = e^0.5 > 1.2 with A > 0: already
    # clipped, excluded. (1,0) has Cov 2: the only candidate, so it is drawn whether the draw size is
    # max(1, int(2e-4 * 4)) = 1 or int(0.5 * 4) = 2.
    assert info["cov_selected"] == [[False, False], [True, False]]
    assert info["clipped_high"] == [[True, False], [False, False]]
    # PPO values: -1.2 (clipped) | -e^0.1 | A = -1, r = e^-0.1 >= 0.8: +e^-0.1 (kept, detached) | +e^0.3
    assert_close(value, [[-1.2, -E(0.1)], [E(-0.1), E(0.3)]])
    # PPO gradients -A r, 0 where clipped or cov-detached
    assert_close(grad, [[0.0, -E(0.1)], [0.0, E(0.3)]])


def test_clip_cov_bounds_are_strict():
    # ub = 2: Cov = 2 is no longer inside (lb, ub), nothing is detached and (1,0) keeps -A r = e^-0.1.
    _, grad, info = per_token(losses.clip_cov_loss, COV_LOGP, COV_OLD, COV_ADV, mask=COV_MASK, eps_low=0.2,
                              eps_high=0.2, clip_cov_ratio=0.5, clip_cov_lb=1.0, clip_cov_ub=2.0)
    assert not any(any(row) for row in info["cov_selected"])
    assert_close(grad, [[0.0, -E(0.1)], [E(-0.1), E(0.3)]])


def test_clip_cov_random_draw_is_reproducible():
    # On-policy, logp = [[-1, -5], [-5, -1]] (mean -3), A = +1 | -1: Cov = [[2, -2], [2, -2]]: two candidates
    # (0,0) and (1,0), and one is drawn (max(1, int(2e-4 * 4)) = 1).
    logp = [[-1.0, -5.0], [-5.0, -1.0]]
    draws = []
    for _ in range(2):
        _, grad, info = per_token(losses.clip_cov_loss, logp, logp, COV_ADV, mask=COV_MASK, eps_low=0.2,
                                  eps_high=0.2, clip_cov_ratio=2e-4, clip_cov_lb=1.0, clip_cov_ub=5.0)
        selected = info["cov_selected"]
        assert sum(map(sum, selected)) == 1 and selected[0][1] is False and selected[1][1] is False
        # r = 1: gradient -A everywhere except the drawn token, which gets 0
        expected = [[0.0 if selected[b][k] else -COV_ADV[b][k] for k in range(2)] for b in range(2)]
        assert_close(grad, expected)
        draws.append(selected)
    assert draws[0] == draws[1]


def test_kl_cov_penalises_the_top_covariance_tokens():
    # logp = [[-1, -4], [-6, -1]]: mean -3, logp - mean = [[2, -1], [-3, 2]]; A = +1 | -1 (mean 0):
    # Cov = [[2, -1], [3, -2]] -> top-1 (1,0), top-2 (1,0) and (0,0).
    logp = [[-1.0, -4.0], [-6.0, -1.0]]
    delta = [[0.2, -0.1], [-0.3, 0.4]]
    old = [[lp - d for lp, d in zip(rl, rd, strict=True)] for rl, rd in zip(logp, delta, strict=True)]
    beta = 0.5
    for ratio, selected in ((2e-4, [[False, False], [True, False]]), (0.5, [[True, False], [True, False]])):
        value, grad, info = per_token(losses.kl_cov_loss, logp, old, COV_ADV, mask=COV_MASK, kl_cov_ratio=ratio,
                                      kl_cov_coef=beta)
        assert info["cov_selected"] == selected
        pen = [[beta * abs(d) * s for d, s in zip(rd, rs, strict=True)] for rd, rs in zip(delta, selected, strict=True)]
        dpen = [[beta * math.copysign(1.0, d) * s for d, s in zip(rd, rs, strict=True)]
                for rd, rs in zip(delta, selected, strict=True)]
        # base -r A, UNCLIPPED: (0,0) has r = e^0.2 > 1.2 with A > 0 and still gets -r A (no PPO clip in KL-Cov)
        base = [[-E(0.2), -E(-0.1)], [E(-0.3), E(0.4)]]
        assert_close(value, [[b + p for b, p in zip(rb, rp, strict=True)] for rb, rp in zip(base, pen, strict=True)])
        # gradient -A r + beta * sign(delta) on the selected tokens
        assert_close(grad, [[b + p for b, p in zip(rb, rp, strict=True)] for rb, rp in zip(base, dpen, strict=True)])


def test_kl_cov_penalty_has_no_gradient_at_ratio_one():
    _, grad, info = per_token(losses.kl_cov_loss, COV_LOGP, COV_LOGP, COV_ADV, mask=COV_MASK, kl_cov_ratio=0.5,
                              kl_cov_coef=1.0)
    assert any(any(row) for row in info["cov_selected"])
    assert_close(grad, [[-1.0, -1.0], [1.0, 1.0]])  # -A: d|delta| at 0 is 0


# ---------------------------------------------------------------------------------------------
# DPPO binary TV: mask where A > 0 and p - p_old > 0.2, or A < 0 and p - p_old < -0.2; else -r A.


def test_dppo_tv_mask_value_and_gradient():
    p = [0.8, 0.05, 0.6, 0.8, 0.5, 0.3]
    p_old = [0.5, 0.01, 0.9, 0.5, 0.8, 0.3]
    advs = [1.0, 1.0, -1.0, -1.0, 1.0, 0.5]
    value, grad, info = per_token(losses.dppo_tv_loss, [[LN(x) for x in p]], [[LN(x) for x in p_old]], [advs],
                                  dppo_delta=0.2)
    r = [a / b for a, b in zip(p, p_old, strict=True)]  # 1.6, 5, 2/3, 1.6, 0.625, 1
    # token 0: A > 0, p - p_old = 0.3 > 0.2: masked (clipped_high), value -r A held, gradient 0
    # token 1: A > 0, r = 5 (PPO would clip) but |p - p_old| = 0.04: inside the trust region, gradient -r A = -5
    # token 2: A < 0, p - p_old = -0.3 < -0.2: masked (clipped_low), value +r held, gradient 0
    # token 3: A < 0, p - p_old = +0.3: the mask is one-sided in the direction of A, kept: gradient -r A = 1.6
    # token 4: A > 0, p - p_old = -0.3: kept, gradient -0.625
    # token 5: r = 1, A = 0.5: the on-policy PG, -A
    assert_close(value[0], [-r[i] * advs[i] for i in range(6)])
    assert_close(grad[0], [0.0, -5.0, 0.0, 1.6, -0.625, -0.5])
    assert info["clipped_high"][0] == [True, False, False, False, False, False]
    assert info["clipped_low"][0] == [False, False, True, False, False, False]


# ---------------------------------------------------------------------------------------------
# LUSPO = GSPO with each response's loss times its length (TRL `luspo`).
GSPO_MASK = [[1, 1, 1], [1, 1, 0], [1, 1, 0]]
GSPO_DELTA = [[0.1, 0.2, -0.05], [0.4, 0.6, 7.0], [0.5, 0.5, -9.0]]  # pad entries must not matter
GSPO_OLD = [[-1.0, -2.0, -0.5], [-1.5, -0.7, -3.0], [-0.2, -0.9, -1.0]]
GSPO_ADV = [1.0, -1.0, 2.0]


def test_luspo_value_and_gradient():
    logp = [[o + d for o, d in zip(ro, rd, strict=True)] for ro, rd in zip(GSPO_OLD, GSPO_DELTA, strict=True)]
    loss, grad, _ = through_policy_loss("luspo", logp, GSPO_OLD, GSPO_ADV, GSPO_MASK, eps_low=0.2, eps_high=0.28)
    # GSPO per response (test_losses): s0 = exp(0.25/3), A0 = +1 unclipped: -s0; s1 = e^0.5, A1 = -1: +s1;
    # s2 = e^0.5 > 1.28 with A2 = +2: clipped, -2 * 1.28. LUSPO multiplies by n = 3, 2, 2.
    s0, s1 = E(0.25 / 3), E(0.5)
    assert_close(loss, (-3 * s0 + 2 * s1 - 2 * 2 * 1.28) / 3)
    # d/d logp_t = (1/B) n_k (-A_k s_k / n_k) = -A_k s_k / B: no 1/|y_k| (GSPO's length bias removed)
    assert_close(grad, [[-s0 / 3] * 3, [s1 / 3, s1 / 3, 0.0], [0.0, 0.0, 0.0]])


def test_luspo_is_gspo_times_length():
    delta, mask, adv = t(GSPO_DELTA), t(GSPO_MASK), t([[a] * 3 for a in GSPO_ADV])
    gspo, gspo_info = losses.gspo_loss(delta, adv, mask, eps_low=0.2, eps_high=0.28)
    luspo, luspo_info = losses.luspo_loss(delta, adv, mask, eps_low=0.2, eps_high=0.28)
    assert_close(luspo, (gspo * t([[3.0], [2.0], [2.0]])).tolist())
    assert all(torch.equal(gspo_info[k], luspo_info[k]) for k in gspo_info)


# ---------------------------------------------------------------------------------------------
# On-policy identities through policy_loss, every aggregation mode (weights as in test_losses.py).
AGG_MASK = [[1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 1]]
MODE_WEIGHTS = {  # per-row aggregation weights for AGG_MASK (lengths 3, 2, 1, 3), group_size 2, max_len 20
    "token-mean": [1 / 9] * 4,
    "seq-mean-token-mean": [1 / 12, 1 / 8, 1 / 4, 1 / 12],
    "seq-mean-token-sum": [1 / 4] * 4,
    "seq-mean-token-sum-norm": [1 / 80] * 4,
    "group-token-mean": [1 / 10, 1 / 10, 1 / 8, 1 / 8],
}
LENGTHS = [3, 2, 1, 3]
ON_POLICY_SCALE = {"luspo": LENGTHS}  # LUSPO's gradient carries |y_k|; the others give the plain -A * weight


@pytest.mark.parametrize("mode", list(MODE_WEIGHTS))
@pytest.mark.parametrize("preset", ["sapo", "gmpo", "kl_cov", "dppo_tv", "luspo"])
def test_gradient_at_ratio_one(preset, mode):
    gen = torch.Generator().manual_seed(0)
    old = (-torch.rand(4, 3, generator=gen, dtype=F64) * 3).tolist()
    adv = [1.5, -0.5, -2.0, 0.25]
    _, grad, stats = through_policy_loss(preset, old, old, adv, AGG_MASK, aggregation=mode, group_size=2,
                                         max_len=20)
    scale = ON_POLICY_SCALE.get(preset, [1] * 4)
    expected = [[-a * w * n * m for m in row]
                for a, w, n, row in zip(adv, MODE_WEIGHTS[mode], scale, AGG_MASK, strict=True)]
    assert_close(grad, expected)
    assert stats["policy/clipfrac"] == 0.0


def test_clip_cov_stats_and_policy_loss_route_logp():
    # clip_cov through policy_loss: the detached share is logged as policy/cov_selected_frac (1 of 4 tokens).
    loss, grad, stats = through_policy_loss("clip_cov", COV_LOGP, COV_OLD, [1.0, -1.0], COV_MASK)
    assert stats["policy/cov_selected_frac"] == pytest.approx(1 / 4)
    assert stats["policy/clipfrac_high"] == pytest.approx(1 / 4)
    # token-mean over 4 tokens: the per-token gradients of test_clip_cov_detaches_the_covariance_token / 4
    assert_close(grad, [[0.0, -E(0.1) / 4], [0.0, E(0.3) / 4]])
    assert_close(loss, (-1.2 - E(0.1) + E(-0.1) + E(0.3)) / 4)


def test_surrogate_without_logp_raises_for_objectives_that_need_it():
    cfg = RunConfig.from_preset("kl_cov")
    x = torch.zeros(1, 2, dtype=F64)
    with pytest.raises(ValueError, match="logp"):
        losses.surrogate(x, x, torch.ones(1, 2, dtype=F64), cfg)


@pytest.mark.parametrize("field, value", [
    ("sapo_tau_pos", 0.0), ("sapo_tau_neg", -1.0), ("clip_cov_ratio", 0.0), ("clip_cov_ratio", 1.5),
    ("kl_cov_ratio", 0.0), ("kl_cov_coef", -0.1), ("dppo_delta", 0.0), ("dppo_delta", 2.0),
])
def test_bad_new_numbers_name_the_field(field, value):
    with pytest.raises(ConfigError, match=f"^{field}:"):
        RunConfig(**{field: value})


def test_clip_cov_bounds_must_be_ordered():
    with pytest.raises(ConfigError, match="clip_cov_lb/clip_cov_ub"):
        RunConfig(clip_cov_lb=5.0, clip_cov_ub=1.0)


# ---------------------------------------------------------------------------------------------
# Two RL steps of each preset on the toy world (as tests/test_train.py's preset smoke test).


@pytest.fixture(scope="module")
def problems():
    from eureka_kit.data import toyworld

    return toyworld.load("train", "math", seed=0, n_per_level=4)


@pytest.mark.parametrize("preset", NEW_PRESETS)
def test_preset_runs_two_steps_and_moves_the_policy(tmp_path, problems, parity_reward, preset):
    from eureka_kit.engine.loop import train
    from eureka_kit.models import build_toy_model

    model, tok = build_toy_model(seed=6)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    cfg = RunConfig.from_preset(preset, run_dir=str(tmp_path / preset), update_epochs=2, rollout_batch_size=4,
                                group_size=4, train_batch_size=8, micro_batch_size=8, max_len=20, num_steps=2, lr=1e-3)
    run = train(cfg, policy=model, processor=tok, problems=problems, progress=False)
    assert len(run.history) == 2
    assert any(not torch.equal(p, before[n]) for n, p in model.named_parameters()), preset
    assert all(math.isfinite(h["loss/total"]) for h in run.history if "loss/total" in h)
    assert max(h.get("policy/ratio_max", 1.0) for h in run.history) != 1.0  # the second epoch is off-policy
