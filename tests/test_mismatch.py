"""The mismatch lab's math: raw metrics of mu against pi_old and the corrections (TIS, IcePop, OPSM, M2PO), against
hand-derived values and gradients; and the injected mismatches (precision, top-p/top-k, learner temperature, stale
sampler) in `train()`."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from eureka_kit.algos import losses, mismatch
from eureka_kit.config import PRESETS, ConfigError, RunConfig

LN2 = math.log(2)


def _logs(*values):
    return torch.log(torch.tensor(values, dtype=torch.float64)).float()


def test_mismatch_stats_match_hand_values():
    # rho = pi_old / mu: row 0 tokens 2 and 1/2, row 1 one token 4 (then padding)
    old = torch.stack([_logs(0.5, 0.25), _logs(0.8, 0.3)])
    mu = torch.stack([_logs(0.25, 0.5), _logs(0.2, 0.9)])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    s = mismatch.mismatch_stats(old, mu, mask)
    assert s["mismatch/abs_mean"] == pytest.approx(4 * LN2 / 3, rel=1e-5)
    assert s["mismatch/abs_max"] == pytest.approx(2 * LN2, rel=1e-5)
    # k3 = rho - 1 - ln rho: (1 - ln2) + (ln2 - 1/2) + (3 - 2 ln2)
    assert s["mismatch/kl_k3"] == pytest.approx((3.5 - 2 * LN2) / 3, rel=1e-5)
    # sequence weights w = (1, 4): chi^2 = mean(w^2) / mean(w)^2 - 1 = 8.5 / 6.25 - 1; ESS = 25 / (2 * 17)
    assert s["mismatch/seq_chi2"] == pytest.approx(0.36, rel=1e-5)
    assert s["mismatch/seq_ess"] == pytest.approx(25 / 34, rel=1e-5)
    assert s["mismatch/rho_out_frac"] == pytest.approx(1 / 3)  # 4 is outside [1/2, 2]; 2 and 1/2 are inside
    assert s["mismatch/rho_q50"] == pytest.approx(2.0, rel=1e-5)


def test_mismatch_stats_vanish_when_the_sampler_is_the_learner():
    old = -torch.rand(3, 5) * 4
    s = mismatch.mismatch_stats(old, old.clone(), torch.ones(3, 5))
    assert s["mismatch/abs_max"] == s["mismatch/kl_k3"] == s["mismatch/seq_chi2"] == s["mismatch/rho_out_frac"] == 0
    assert s["mismatch/seq_ess"] == 1 and s["mismatch/rho_q01"] == s["mismatch/rho_q99"] == 1


def _loss_grad(old, mu, adv, mask, **overrides):
    """policy_loss's value and d loss / d logp at the on-policy point logp = old (PG surrogate, token-mean)."""
    logp = old.clone().requires_grad_()
    loss, stats = losses.policy_loss(logp, old, adv, mask, preset="pg", behavior_logp=mu,
                                     **{"aggregation": "token-mean", **overrides})
    loss.backward()
    return loss, logp.grad, stats


def test_tis_token_weights_are_capped_rho():
    old = _logs(0.8, 0.2, 0.5)[None]
    mu = _logs(0.2, 0.4, 0.5)[None]  # rho = 4, 1/2, 1
    _, grad, stats = _loss_grad(old, mu, torch.tensor([1.0]), torch.ones(1, 3), correction="tis", correction_cap=2.0)
    # PG: d(-A * delta)/d logp = -A, times the detached weight min(rho, 2), over 3 tokens
    torch.testing.assert_close(grad, torch.tensor([[-2.0, -0.5, -1.0]]) / 3)
    assert stats["correction/capped_frac"] == pytest.approx(1 / 3) and stats["correction/masked_frac"] == 0
    assert stats["correction/weight_max"] == pytest.approx(2.0)


def test_tis_sequence_weight_is_the_capped_product():
    old = torch.stack([_logs(0.8, 0.5), _logs(0.5, 0.5)])
    mu = torch.stack([_logs(0.4, 0.5), _logs(0.5, 1.0)])  # w = 2 * 1 = 2 -> capped at 1.5; w = 1 * 1/2
    _, grad, _ = _loss_grad(old, mu, torch.tensor([1.0, -1.0]), torch.ones(2, 2), correction="tis",
                            correction_level="sequence", correction_cap=1.5)
    torch.testing.assert_close(grad, torch.tensor([[-1.5, -1.5], [0.5, 0.5]]) / 4)


def test_icepop_masks_tokens_outside_the_band_and_drops_them_from_the_denominator():
    old = _logs(0.8, 0.3, 0.1, 0.5)[None]
    mu = _logs(0.2, 0.2, 0.4, 0.5)[None]  # rho = 4 (out), 1.5, 1/4 (out), 1
    _, grad, stats = _loss_grad(old, mu, torch.tensor([2.0]), torch.ones(1, 4), correction="icepop",
                                correction_low=0.5, correction_high=2.0)
    # two kept tokens: token-mean over 2, weights rho = 1.5 and 1, A = 2
    torch.testing.assert_close(grad, torch.tensor([[0.0, -2.0 * 1.5 / 2, 0.0, -2.0 / 2]]))
    assert stats["correction/masked_frac"] == pytest.approx(0.5)


def test_icepop_sequence_level_keeps_or_masks_whole_responses():
    old = torch.stack([_logs(0.8, 0.5), _logs(0.6, 0.5)])
    mu = torch.stack([_logs(0.2, 0.5), _logs(0.5, 0.5)])  # w = 4 (masked), w = 1.2 (kept)
    _, grad, stats = _loss_grad(old, mu, torch.tensor([1.0, 1.0]), torch.ones(2, 2), correction="icepop",
                                correction_level="sequence")
    torch.testing.assert_close(grad, torch.tensor([[0.0, 0.0], [-0.6, -0.6]]))
    assert stats["correction/masked_frac"] == pytest.approx(0.5)


def test_opsm_masks_negative_responses_that_drifted_from_the_sampler():
    old = torch.full((3, 2), math.log(0.5))
    mu = torch.stack([_logs(0.5, 0.9), _logs(0.5, 0.9), _logs(0.5, 0.55)])  # mean log(mu / pi) = 0.29, 0.29, 0.048
    adv = torch.tensor([-1.0, 1.0, -1.0])
    _, grad, stats = _loss_grad(old, mu, adv, torch.ones(3, 2), correction="opsm", opsm_delta=0.1)
    # row 0 (A < 0, drift 0.29 > 0.1) is masked; rows 1 (A > 0) and 2 (drift 0.048) keep -A over 4 tokens
    torch.testing.assert_close(grad, torch.tensor([[0.0, 0.0], [-0.25, -0.25], [0.25, 0.25]]))
    assert stats["correction/masked_frac"] == pytest.approx(1 / 3)


def test_m2po_drops_the_largest_squared_log_ratios_until_the_second_moment_fits():
    old = torch.zeros(1, 4)
    logp = torch.tensor([[0.5, 0.1, 0.0, -0.05]], requires_grad=True)
    # delta^2 = .25, .01, 0, .0025: mean .065625 > .04; without .25: .004167 <= .04 -> one token dropped
    loss, stats = losses.policy_loss(logp, old, torch.tensor([1.0]), torch.ones(1, 4), preset="pg",
                                     aggregation="token-mean", correction="m2po", m2po_tau=0.04)
    loss.backward()
    torch.testing.assert_close(logp.grad, torch.tensor([[0.0, -1 / 3, -1 / 3, -1 / 3]]))
    assert stats["correction/masked_frac"] == pytest.approx(0.25)
    _, keep = mismatch.m2po(torch.zeros(1, 4), torch.ones(1, 4), RunConfig(m2po_tau=1.0), logp=logp, old_logp=old)
    assert keep.sum() == 4  # within the bound nothing is dropped


def test_corrections_need_mu_and_masked_tokens_get_no_gradient():
    old, mask = -torch.rand(2, 3), torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    with pytest.raises(ValueError, match="behavior_logp"):
        losses.policy_loss(old.clone(), old, torch.ones(2), mask, preset="grpo", correction="tis")
    for correction in ("tis", "icepop", "opsm", "m2po"):
        logp = (old + 0.3).requires_grad_()
        mu = torch.where(mask.bool(), old - 0.4, torch.nan)  # NaN on padding must not leak
        loss, _ = losses.policy_loss(logp, old, torch.tensor([1.0, -1.0]), mask, preset="grpo",
                                     behavior_logp=mu, correction=correction)
        loss.backward()
        assert torch.isfinite(loss) and (logp.grad[~mask.bool()] == 0).all(), correction


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_correction_composes_with_every_preset(preset):
    gen = torch.Generator().manual_seed(0)
    cfg = RunConfig.from_preset(preset, group_size=2, max_len=32)
    old = -torch.rand(4, 4, generator=gen) * 2
    mu = old + 0.5 * torch.randn(4, 4, generator=gen)
    mask = torch.ones(4, 4)
    ref = old if cfg.kl_coef > 0 else None
    for correction in ("none", "tis", "icepop", "opsm", "m2po"):
        logp = (old + 0.2 * torch.randn(4, 4, generator=gen)).requires_grad_()
        loss, stats = losses.policy_loss(logp, old, torch.tensor([1.0, -1.0, 0.5, -0.5]), mask, cfg=cfg,
                                         ref_logp=ref, behavior_logp=mu, correction=correction)
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(logp.grad).all(), (preset, correction)
        assert ("correction/masked_frac" in stats) == (correction != "none")


def test_correction_config_is_validated():
    with pytest.raises(ConfigError, match="correction"):
        RunConfig(correction="is")
    with pytest.raises(ConfigError, match="correction_low"):
        RunConfig(correction_low=1.5)
    with pytest.raises(ConfigError, match="sampler_dtype"):
        RunConfig(sampler_dtype="int8")
    with pytest.raises(ConfigError, match="vLLM"):
        RunConfig(rollout_backend="vllm", sampler_lag=1)


# ---------------------------------------------------------------------------------------------
# Injected mismatch in train(): the null run (lr 0) isolates the sampler's mismatch from learning.

NULL = dict(rollout_batch_size=4, group_size=4, train_batch_size=16, micro_batch_size=16, max_len=16, num_steps=2,
            lr=0.0, prompt_template="none")


pytestmark = pytest.mark.usefixtures("parity_reward")  # tests/conftest.py: mixed rewards from a random-init model


@pytest.fixture(scope="module")
def toy():
    from eureka_kit.data import toyworld
    from eureka_kit.models.loading import build_toy_model

    model, tok = build_toy_model(seed=1)
    return model, tok, toyworld.load("train", "math", seed=0, n_per_level=4)


def _null_run(toy, tmp_path, preset="grpo", **overrides):
    from eureka_kit.engine.loop import train

    model, tok, problems = toy
    cfg = RunConfig.from_preset(preset, run_dir=str(tmp_path / "_".join(map(str, overrides.items()))),
                                **{**NULL, **overrides})
    return train(cfg, policy=copy.deepcopy(model), processor=tok, problems=problems, progress=False).history


def test_null_run_in_fp32_has_no_mismatch(toy, tmp_path):
    for step in _null_run(toy, tmp_path):
        assert step["mismatch/abs_mean"] <= 1e-6 and step["mismatch/kl_k3"] <= 1e-6
        assert step["mismatch/seq_chi2"] <= 1e-6 and 1 - step["mismatch/seq_ess"] <= 1e-6
        assert step["mismatch/rho_out_frac"] == 0
        assert step["mismatch/abs_max"] <= 1e-4  # one token's float rounding: cached decode vs full forward
        assert step["policy/ratio_max"] == pytest.approx(1.0, abs=1e-6)  # lr 0: pi_theta never leaves pi_old


@pytest.mark.parametrize("injection", [dict(sampler_dtype="bfloat16"), dict(top_p=0.7), dict(top_k=3),
                                       dict(learner_temperature=0.8), dict(sampler_lag=1, lr=1e-2)],
                         ids=lambda d: next(iter(d)))
def test_each_injected_mismatch_shows_in_the_raw_metrics(toy, tmp_path, injection):
    clean = _null_run(toy, tmp_path, **({"lr": injection["lr"]} if "lr" in injection else {}))
    injected = _null_run(toy, tmp_path, **injection)
    last = injected[-1]
    assert last["mismatch/kl_k3"] > 1e4 * max(clean[-1]["mismatch/kl_k3"], 1e-12)
    assert last["mismatch/abs_mean"] > 1e-3 > clean[-1]["mismatch/abs_mean"]
    if "sampler_lag" in injection:  # step 0 has no older weights to sample with
        assert injected[0]["mismatch/abs_mean"] <= 1e-6
    if "top_p" in injection or "top_k" in injection:  # the truncation bias: mu renormalised, so rho <= 1
        assert last["mismatch/rho_q99"] <= 1 + 1e-5 and last["mismatch/rho_q01"] < 0.99


def test_null_run_corrections_act_on_the_mismatched_tokens(toy, tmp_path):
    """Sampled with top-k 3 and scored untruncated, rho <= 1. TIS weights are rho: none capped, their mean below 1.
    IcePop with correction_low at the uncorrected run's median rho masks half the tokens (lr 0: same samples)."""
    plain = _null_run(toy, tmp_path, top_k=3)[-1]
    tis = _null_run(toy, tmp_path, top_k=3, correction="tis")[-1]
    assert tis["correction/capped_frac"] == 0 and tis["correction/masked_frac"] == 0
    assert tis["correction/weight_mean"] < 1 and tis["correction/weight_max"] <= 1 + 1e-5
    icepop = _null_run(toy, tmp_path, top_k=3, correction="icepop", correction_low=plain["mismatch/rho_q50"])[-1]
    assert icepop["correction/masked_frac"] == pytest.approx(0.5, abs=0.05)
    assert icepop["correction/weight_max"] <= 1 + 1e-5


def _surrogate_presets():
    seen = {}
    for name, choices in PRESETS.items():
        seen.setdefault(choices.get("surrogate", "pg"), name)
    return sorted(seen.values())


@pytest.mark.parametrize("preset", _surrogate_presets())
def test_corrections_train_two_steps_with_each_surrogate(toy, tmp_path, preset):
    for correction in ("tis", "icepop", "opsm", "m2po"):
        hist = _null_run(toy, tmp_path / correction, preset=preset, sampler_dtype="bfloat16", correction=correction,
                         lr=1e-3, update_epochs=2, correction_level="sequence" if correction == "tis" else "token")
        assert len(hist) == 2 and all(math.isfinite(h["loss/total"]) for h in hist), (preset, correction)
        assert all("correction/masked_frac" in h for h in hist)


def test_correction_values_off_policy_match_hand_computation():
    """Loss values (not only gradients) with pi_theta != pi_old: PG surrogate -A * delta, token-mean."""
    old = _logs(0.5, 0.5, 0.5)[None]
    logp = _logs(0.6, 0.4, 0.5)[None]  # delta = ln 1.2, ln 0.8, 0
    mu = _logs(0.125, 0.4, 0.5)[None]  # rho = 4, 1.25, 1
    delta = torch.log(torch.tensor([1.2, 0.8, 1.0]))
    adv = torch.tensor([2.0])
    tis, _ = losses.policy_loss(logp, old, adv, torch.ones(1, 3), preset="pg", aggregation="token-mean",
                                behavior_logp=mu, correction="tis", correction_cap=2.0)
    assert float(tis) == pytest.approx(float(-(2.0 * torch.tensor([2.0, 1.25, 1.0]) * delta).sum() / 3), rel=1e-5)
    icepop, _ = losses.policy_loss(logp, old, adv, torch.ones(1, 3), preset="pg", aggregation="token-mean",
                                   behavior_logp=mu, correction="icepop")
    # rho = 4 is masked: the mean runs over the 2 kept tokens
    assert float(icepop) == pytest.approx(float(-(2.0 * torch.tensor([1.25, 1.0]) * delta[1:]).sum() / 2), rel=1e-5)
    seq, _ = losses.policy_loss(logp, old, adv, torch.ones(1, 3), preset="pg", aggregation="token-mean",
                                behavior_logp=mu, correction="tis", correction_level="sequence", correction_cap=3.0)
    # w = 4 * 1.25 * 1 = 5, capped at 3 on every token
    assert float(seq) == pytest.approx(float(-(2.0 * 3.0 * delta).sum() / 3), rel=1e-5)
