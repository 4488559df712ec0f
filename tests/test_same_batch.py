"""Same-batch comparison on a hand-made batch through a real toy model: hand-derived per-token weights, the dropped
and capped tokens each objective should report, and parameter-gradient cosines checked against direct backwards."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from eureka_kit.algos import losses
from eureka_kit.engine.batch import Rollouts
from eureka_kit.engine.logprobs import completion_logprobs
from eureka_kit.engine.runs import RunDir
from eureka_kit.models import build_toy_model
from eureka_kit.workbench.same_batch import (
    compare_step,
    compare_tensors,
    objective_config,
    same_batch_figure,
    same_batch_html,
    same_batch_table,
)

ADV = torch.tensor([1.0, -1.0])  # one group of two responses, three tokens each (no padding)
MASK = torch.ones(2, 3)
# Response 0 (A = +1): token 1 has ratio 6 (above every upper clip, above CISPO's cap 5).
# Response 1 (A = -1): token 2 has ratio 1/2 (below the lower clip 0.8).
SHIFT = torch.tensor([[0.0, math.log(6.0), 0.0], [0.0, 0.0, math.log(0.5)]])
OUT_OF_CLIP = [(0, 1), (1, 2)]


@pytest.fixture(scope="module")
def toy():
    torch.manual_seed(0)
    model, tok = build_toy_model(seed=0)
    prompt = tok("3+4=", return_tensors="pt", add_special_tokens=False)["input_ids"]
    completion = tok("7<a", return_tensors="pt", add_special_tokens=False)["input_ids"]
    completion2 = tok("8>b", return_tensors="pt", add_special_tokens=False)["input_ids"]
    assert completion.shape[1] == completion2.shape[1] == 3
    ro = Rollouts(prompt_ids=prompt.repeat(2, 1), prompt_mask=torch.ones(2, prompt.shape[1], dtype=torch.long),
                  completion_ids=torch.cat([completion, completion2]), completion_mask=torch.ones(2, 3, dtype=torch.long),
                  behavior_logp=torch.zeros(2, 3), texts=["7<a", "8>b"], finish_reasons=["stop", "stop"],
                  problem_index=torch.zeros(2, dtype=torch.long), problems=[{"id": "p", "answer": "7"}])
    cfg = objective_config("grpo", group_size=2, max_len=3)
    return model, ro, cfg


def _forward(toy):
    model, ro, cfg = toy
    return completion_logprobs(model, ro, torch.arange(2), cfg)


def _params(model):
    return [p for p in model.parameters() if p.requires_grad]


def _direct_grad(toy, preset, old):
    """dL/dtheta by a plain backward of policy_loss through the model (the reference for the VJP route)."""
    model = toy[0]
    model.zero_grad()
    cfg = objective_config(preset, group_size=2, max_len=3)
    loss, _ = losses.policy_loss(_forward(toy), old, ADV, MASK, cfg=cfg)
    loss.backward()
    flat = torch.cat([p.grad.flatten() for p in _params(model)]).double()
    model.zero_grad()
    return flat


def test_on_policy_grpo_cpg_and_sapo_coincide(toy):
    logp = _forward(toy)
    sb = compare_tensors(logp, logp.detach(), ADV, MASK, ["grpo", "cpg", "sapo"], params=_params(toy[0]),
                         group_size=2, max_len=3)
    # at r = 1 every token gets -A / 6: seq-mean-token-mean (1/2 x 1/3) = group-token-mean (1 group of 6 tokens);
    # SAPO's gate has slope exactly 1 at r = 1
    expected = np.array([[-1 / 6] * 3, [1 / 6] * 3])
    for name in ("grpo", "cpg", "sapo"):
        o = sb.objectives[name]
        np.testing.assert_allclose(o.grad_coef, expected, atol=1e-12)
        assert not o.dropped.any() and not o.capped.any()
    for a, b in (("grpo", "cpg"), ("grpo", "sapo")):
        assert sb.param_cosine.loc[a, b] == pytest.approx(1.0, abs=1e-6)
    assert sb.objectives["grpo"].param_grad_norm > 0
    assert sb.objectives["grpo"].param_grad_norm == pytest.approx(sb.objectives["cpg"].param_grad_norm, rel=1e-6)


def test_off_policy_batch_reports_the_expected_dropped_and_capped_tokens(toy):
    logp = _forward(toy)
    old = logp.detach() - SHIFT  # ratios exp(SHIFT): 6 on (0, 1), 1/2 on (1, 2), 1 elsewhere
    sb = compare_tensors(logp, old, ADV, MASK, ["grpo", "cpg", "pg", "cispo", "sapo"], params=_params(toy[0]),
                         group_size=2, max_len=3)
    expected_cut = np.zeros((2, 3), dtype=bool)
    for i, t in OUT_OF_CLIP:
        expected_cut[i, t] = True
    for name in ("grpo", "cpg"):  # the ratio clip [0.8, 1.2] and the log-ratio clip [ln 0.8, ln 1.2] agree here
        np.testing.assert_array_equal(sb.objectives[name].dropped, expected_cut)
        assert not sb.objectives[name].capped.any()
    # the clipped tokens get no gradient; the others -A r / 6 with r = 1
    np.testing.assert_allclose(sb.objectives["grpo"].grad_coef, [[-1 / 6, 0, -1 / 6], [1 / 6, 1 / 6, 0]], atol=1e-12)
    # both cut the same tokens and weight the others alike: the same parameter gradient
    assert sb.param_cosine.loc["grpo", "cpg"] == pytest.approx(1.0, abs=1e-6)
    # PG cuts nothing: every token -A / 6, so its gradient differs from GRPO's
    assert not sb.objectives["pg"].dropped.any()
    np.testing.assert_allclose(sb.objectives["pg"].grad_coef, [[-1 / 6] * 3, [1 / 6] * 3], atol=1e-12)
    assert sb.param_cosine.loc["pg", "grpo"] < 1 - 1e-4
    # CISPO (token-mean, absolute cap 5): weight min(r, 5) kept on every token; the ratio-6 token is capped
    cispo = sb.objectives["cispo"]
    assert not cispo.dropped.any()
    np.testing.assert_array_equal(np.argwhere(cispo.capped), [[0, 1]])
    np.testing.assert_allclose(cispo.grad_coef, [[-1 / 6, -5 / 6, -1 / 6], [1 / 6, 1 / 6, 0.5 / 6]], atol=1e-12)
    # SAPO never cuts nor caps
    assert not sb.objectives["sapo"].dropped.any() and not sb.objectives["sapo"].capped.any()
    # the VJP route equals a plain backward of each loss through the model
    g_grpo, g_pg = _direct_grad(toy, "grpo", old), _direct_grad(toy, "pg", old)
    assert sb.objectives["grpo"].param_grad_norm == pytest.approx(float(g_grpo.norm()), rel=1e-5)
    direct_cos = float(g_grpo @ g_pg / (g_grpo.norm() * g_pg.norm()))
    assert sb.param_cosine.loc["grpo", "pg"] == pytest.approx(direct_cos, abs=1e-6)
    table = same_batch_table(sb)
    assert table.set_index("preset").loc["grpo", "dropped"] == 2
    assert table.set_index("preset").loc["cispo", "capped"] == 1
    assert table.set_index("preset").loc["grpo", "dropped share"] == pytest.approx(2 / 6)


def test_a_correction_drops_the_tokens_outside_its_band_and_needs_mu():
    logp = torch.zeros(2, 3)
    mu = torch.zeros(2, 3)
    mu[1, 0] = -math.log(3.0)  # rho = pi_old / mu = 3, outside IcePop's [0.5, 2]
    sb = compare_tensors(logp, logp, ADV, MASK, ["pg", "grpo"], behavior_logp=mu, group_size=2, max_len=3,
                         correction="icepop")
    for name in ("pg", "grpo"):
        np.testing.assert_array_equal(np.argwhere(sb.objectives[name].dropped), [[1, 0]])
        assert sb.objectives[name].grad_coef[1, 0] == 0
    assert sb.param_cosine is None  # no policy: per-token weights only
    # TIS (cap 2) keeps the token and caps its weight
    tis = compare_tensors(logp, logp, ADV, MASK, ["pg"], behavior_logp=mu, group_size=2, max_len=3, correction="tis")
    np.testing.assert_array_equal(np.argwhere(tis.objectives["pg"].capped), [[1, 0]])
    assert not tis.objectives["pg"].dropped.any()
    with pytest.raises(ValueError, match="behavior_logp"):
        compare_tensors(logp, logp, ADV, MASK, ["pg"], group_size=2, max_len=3, correction="icepop")


def test_compare_step_reads_the_saved_batch_and_the_views_render(tmp_path):
    old = torch.zeros(2, 3)
    new = SHIFT.clone()
    run = RunDir(tmp_path / "run").create({"preset": "grpo", "group_size": 2, "max_len": 3, "seed": 0})
    run.write_rollouts(0, [{"step": 0, "sample": i, "group": 0, "advantage": float(ADV[i]), "old_logp": old[i].tolist(),
                            "new_logp": new[i].tolist(), "loss_mask": [1.0] * 3, "behavior_logp": old[i].tolist()}
                           for i in (1, 0)])  # written out of order: read back in sample order
    sb = compare_step(run.path, 0, ["grpo", "pg"])
    np.testing.assert_array_equal(sb.objectives["grpo"].dropped, [[False, True, False], [False, False, True]])
    direct = compare_tensors(new, old, ADV, MASK, ["grpo", "pg"], group_size=2, max_len=3)
    assert sb.objectives["grpo"].loss == pytest.approx(direct.objectives["grpo"].loss)
    # cosine of the per-token weights: pg's [-1,-1,-1, 1,1,1]/6 against grpo's [-1,0,-1, 1,1,0]/6 -> 4 / sqrt(6 * 4)
    assert sb.logp_cosine.loc["grpo", "pg"] == pytest.approx(4 / math.sqrt(24))
    assert sb.cosine is sb.logp_cosine
    fig = same_batch_figure(sb)
    np.testing.assert_allclose(fig.data[0].z, sb.logp_cosine.to_numpy())
    assert {t.name for t in fig.data if t.type == "bar"} == {"dropped", "capped"}
    page = same_batch_html(sb)
    assert "grpo" in page and "per-token weights only" in page
    with pytest.raises(ValueError, match="saved steps"):
        compare_step(run.path, 5, ["grpo"])
