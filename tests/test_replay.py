"""Replay of a saved step under another preset: hand-worked values and gradients on a 2-response group."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from eureka_kit.algos import losses
from eureka_kit.engine.runs import RunDir
from eureka_kit.workbench.replay import compare_presets, pad_column, replay_step, replay_tensors, step_tensors

# One group of two responses. Response 0 (A = +1): ratios 1.5, 1. Response 1 (A = -1): ratio 0.5, then padding.
OLD = torch.zeros(2, 2)
NEW = torch.tensor([[math.log(1.5), 0.0], [math.log(0.5), 0.0]])
ADV = torch.tensor([1.0, -1.0])
MASK = torch.tensor([[1.0, 1.0], [1.0, 0.0]])


def _replay(preset, **kw):
    return replay_tensors(OLD, NEW, ADV, MASK, preset=preset, group_size=2, max_len=4, **kw)


def test_pg_is_minus_advantage_times_log_ratio_group_token_mean():
    r = _replay("pg")
    # group-token-mean over 3 valid tokens: -(ln 1.5 + 0 - ln 0.5) / 3 = -ln 3 / 3
    assert r.loss == pytest.approx(-math.log(3) / 3)
    np.testing.assert_allclose(r.grad_coef, [[-1 / 3, -1 / 3], [1 / 3, 0]], atol=1e-12)
    assert not r.clipped_low.any() and not r.clipped_high.any()


def test_grpo_ppo_clip_cuts_both_sides():
    r = _replay("grpo")  # ppo_clip, eps 0.2, seq-mean-token-mean
    # response 0: token 0 clipped at 1.2 (loss -1.2), token 1 ratio 1 (loss -1): mean -1.1
    # response 1: token 0 ratio 0.5 < 0.8 with A < 0: clipped, loss +0.8. Mean over responses: -0.15
    assert r.loss == pytest.approx(-0.15)
    np.testing.assert_array_equal(r.clipped_high, [[True, False], [False, False]])
    np.testing.assert_array_equal(r.clipped_low, [[False, False], [True, False]])
    # only the unclipped token has a gradient: -A * r / (2 tokens) / (2 responses)
    np.testing.assert_allclose(r.grad_coef, [[0, -0.25], [0, 0]], atol=1e-12)
    assert r.stats["policy/clipfrac_low"] == pytest.approx(1 / 3)
    assert r.stats["policy/clipfrac_high"] == pytest.approx(1 / 3)


def test_cpgd_log_ratio_clip_plus_drift():
    r = _replay("cpgd")  # cpg (log-ratio clip) + 0.01 * drift, group-token-mean
    policy = -(math.log(1.2) - math.log(0.8)) / 3
    drift = (0.5 * math.log(1.5) + 0.5 * math.log(2)) / 3  # min(r - 1, 2) * logp, logp = new (old = 0)
    assert r.loss == pytest.approx(policy + 0.01 * drift)
    np.testing.assert_allclose(r.grad_coef, [[0.005 / 3, -1 / 3], [-0.005 / 3, 0]], atol=1e-12)
    # per-token loss reduces to the loss with the preset's aggregation
    assert r.per_token_loss.sum() / 3 == pytest.approx(r.loss)


@pytest.mark.parametrize("preset", ["pg", "grpo", "cpgd", "grpo_dual_clip", "dr_grpo", "cispo", "gspo"])
def test_replay_equals_policy_loss(preset):
    g = torch.Generator().manual_seed(0)
    old = -torch.rand(4, 5, generator=g) * 3
    new = old + torch.randn(4, 5, generator=g) * 0.5
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0], [1, 1, 1, 1, 0]]).float()
    adv = torch.tensor([1.0, -1.0, 0.5, -0.5])
    r = replay_tensors(old, new, adv, mask, preset=preset, group_size=2, max_len=5)
    expected, _ = losses.policy_loss(new.double(), old.double(), adv.double(), mask.double(), preset=preset,
                                     group_size=2, max_len=5, train_batch_size=2, micro_batch_size=2)
    assert r.loss == pytest.approx(float(expected))
    assert (r.grad_coef[mask.numpy() == 0] == 0).all()


def test_kl_term_is_dropped_and_reported():
    r = _replay("grpo_kl")
    assert r.stats["replay/kl_dropped"] == 1.0
    assert r.loss == pytest.approx(_replay("grpo").loss)


def test_pad_column_and_step_tensors():
    t = pad_column([[1.0, 2.0], [3.0]])
    assert t.tolist() == [[1.0, 2.0], [3.0, 0.0]]
    df = pd.DataFrame({"sample": [1, 0], "old_logp": [[0.0], [0.0, 0.0]], "new_logp": [[0.1], [0.2, 0.3]],
                       "loss_mask": [[1.0], [1.0, 1.0]], "advantage": [-1.0, 1.0]})
    st = step_tensors(df)
    np.testing.assert_allclose(st["new_logp"].numpy(), [[0.2, 0.3], [0.1, 0.0]], rtol=1e-6)
    assert st["adv"].tolist() == [1.0, -1.0]


def _fake_run(tmp_path):
    run = RunDir(tmp_path / "run").create({"preset": "grpo", "group_size": 2, "max_len": 4, "seed": 0})
    rows = [{"step": 3, "sample": i, "group": 0, "problem_id": "p", "advantage": float(ADV[i]),
             "tokens": ["a", "b"][: int(MASK[i].sum())],
             "old_logp": OLD[i, : int(MASK[i].sum())].tolist(), "new_logp": NEW[i, : int(MASK[i].sum())].tolist(),
             "loss_mask": MASK[i, : int(MASK[i].sum())].tolist()} for i in range(2)]
    run.write_rollouts(3, rows)
    return run


def test_replay_step_from_a_run_directory(tmp_path):
    run = _fake_run(tmp_path)
    assert replay_step(run.path, 3).loss == pytest.approx(-0.15)  # the run's own preset (grpo)
    assert replay_step(run, 3, "pg").loss == pytest.approx(-math.log(3) / 3)
    with pytest.raises(ValueError, match="saved steps: \\[3\\]"):
        replay_step(run, 7)
    table = compare_presets(run, 3, ["grpo", "cpgd"])
    assert list(table.preset) == ["grpo", "cpgd"]
    assert table.loc[0, "loss/total"] == pytest.approx(-0.15)
