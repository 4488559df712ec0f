"""The process signal inside `train()`: config errors, the advantage the loss receives, parameters moving.

Rollouts are hand-built step-form texts (a random-init toy model never writes `<step>` tags) and the PRM is
a random-init toy model with the `<prm>` marker added, saved to a folder: fast, and no SFT cache needed.
"""

from __future__ import annotations

import pytest
import torch

from eureka_kit.algos import losses
from eureka_kit.config import PRESETS, ConfigError, RunConfig
from eureka_kit.data import toyworld
from eureka_kit.engine import rollout
from eureka_kit.engine.batch import Rollouts
from eureka_kit.engine.loop import train
from eureka_kit.models import build_toy_model
from eureka_kit.prm import process_adv

# Responses per problem, cycled: one correct two-step solution, then wrong ones (G = 2 uses the first two).
TEXTS = ["<step>1+2=3</step><step>3*2=6</step><answer>6</answer>", "<step>1+2=4</step><answer>8</answer>",
         "<step>1+2=3</step><step>3*2=5</step><answer>5</answer>"]
SMALL = dict(rollout_batch_size=2, group_size=2, train_batch_size=4, micro_batch_size=4, max_len=64,
             num_steps=2, lr=1e-3)


@pytest.fixture(scope="module")
def problems():
    return toyworld.load("train", "math", seed=0, n_per_level=2)[:2]


@pytest.fixture(scope="module")
def prm_path(tmp_path_factory):
    from eureka_kit.prm.model import init_prm

    model, tok = build_toy_model(seed=3)
    init_prm(model, tok)
    path = tmp_path_factory.mktemp("prm")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def _hand_rollouts(tok, problems, cfg, *, num_samples=None):
    """Rollouts whose completions are TEXTS for every problem (groups contiguous), EOS-terminated."""
    K = num_samples or cfg.group_size
    prompt_ids, prompt_mask, _ = rollout.encode_prompts(tok, problems, cfg.prompt_template, False, cfg.max_prompt_len)
    texts = [TEXTS[k % len(TEXTS)] for _ in problems for k in range(K)]
    ids = [tok(t, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for t in texts]
    T = max(map(len, ids))
    completion = torch.tensor([i + [tok.pad_token_id] * (T - len(i)) for i in ids])
    mask = torch.tensor([[1] * len(i) + [0] * (T - len(i)) for i in ids])
    index = torch.arange(len(problems)).repeat_interleave(K)
    return Rollouts(prompt_ids=prompt_ids[index], prompt_mask=prompt_mask[index], completion_ids=completion,
                    completion_mask=mask, behavior_logp=torch.zeros(completion.shape), texts=texts,
                    finish_reasons=["stop"] * len(texts), problem_index=index, problems=problems,
                    extras={"pad_id": tok.pad_token_id, "has_behavior_logp": False})


@pytest.fixture(autouse=True)
def step_form_rollouts(monkeypatch):
    """Every rollout is TEXTS; reward 1 for the first response of a group, 0 for the second."""
    from eureka_kit.data import rewards

    monkeypatch.setattr(rollout, "generate", lambda policy, tok, problems, cfg, gen, num_samples=None:
                        _hand_rollouts(tok, problems, cfg, num_samples=num_samples))
    monkeypatch.setattr(rewards, "score_batch", lambda completions, golds, **_: [
        dict(accuracy=float(c == TEXTS[0]), format=0.0, total=float(c == TEXTS[0]), timeout=0.0)
        for c in completions])


def test_preset_is_cpgd_plus_step_advantages():
    prm, cpgd = RunConfig.from_preset("cpgd_prm"), RunConfig.from_preset("cpgd")
    changed = {k for k, v in prm.algorithm().items() if cpgd.algorithm()[k] != v}
    assert changed == {"process_mode"} and prm.process_mode == "step_advantage"
    assert set(PRESETS["cpgd_prm"]) - {"paper"} >= {"process_mode", "process_weight"}


def test_config_rejects_bad_process_values():
    with pytest.raises(ConfigError, match="process_mode.*allowed: none, step_advantage, shaped_reward"):
        RunConfig(process_mode="steps")
    with pytest.raises(ConfigError, match="prm_aggregation"):
        RunConfig(prm_aggregation="median")
    with pytest.raises(ConfigError, match="process_weight"):
        RunConfig(process_weight=-0.1)


def test_process_mode_without_prm_path_names_both_fields(tmp_path, problems):
    model, tok = build_toy_model(seed=0)
    cfg = RunConfig.from_preset("cpgd_prm", run_dir=str(tmp_path / "run"), **SMALL)
    with pytest.raises(ConfigError, match=r"prm_path.*process_mode='step_advantage'"):
        train(cfg, policy=model, processor=tok, problems=problems, progress=False)


def test_advantage_passed_to_the_loss_is_outcome_plus_centered_step_scores(tmp_path, problems, prm_path,
                                                                           monkeypatch):
    # Hand-built: rewards [1, 0] per group -> GRPO A_out = [+1/sqrt2, -1/sqrt2] (Bessel std of {1, 0}).
    # Step scores (answer = last step): [.9, .8, .7] and [.2, .6] -> group baseline b = 3.2 / 5 = .64, w = .5.
    scores = {TEXTS[0]: [0.9, 0.8, 0.7], TEXTS[1]: [0.2, 0.6]}
    monkeypatch.setattr(process_adv.ProcessSignal, "score", lambda self, ro: [scores[t] for t in ro.texts])
    seen = []
    real_loss = losses.policy_loss
    monkeypatch.setattr(losses, "policy_loss", lambda logp, old, adv, mask, **kw: (seen.append(adv.clone()),
                                                                                   real_loss(logp, old, adv, mask, **kw))[1])
    cfg = RunConfig.from_preset("cpgd_prm", prm_path=prm_path, run_dir=str(tmp_path / "run"),
                                **{**SMALL, "num_steps": 1})
    model, tok = build_toy_model(seed=0)
    run = train(cfg, policy=model, processor=tok, problems=problems, progress=False)

    a, b, w = 2 ** -0.5, 0.64, 0.5
    n = lambda text: len(tok(text, add_special_tokens=False)["input_ids"])  # noqa: E731  (tags can be one token)
    good = ([a + w * (0.9 - b)] * n("<step>1+2=3</step>") + [a + w * (0.8 - b)] * n("<step>3*2=6</step>")
            + [a + w * (0.7 - b)] * n("<answer>6</answer>") + [a])  # last: EOS, outside every step
    bad = [-a + w * (0.2 - b)] * n("<step>1+2=4</step>") + [-a + w * (0.6 - b)] * n("<answer>8</answer>") + [-a]
    T = len(good)
    expected = torch.tensor([good, bad + [0.0] * (T - len(bad))] * 2)  # two problems, same texts
    adv = torch.cat(seen)  # one micro-batch holds the whole shuffled batch: restore the order by rows
    assert adv.shape == expected.shape
    rows = lambda x: torch.tensor(sorted(map(tuple, x.tolist())))  # noqa: E731  (order-free comparison)
    torch.testing.assert_close(rows(adv), rows(expected), atol=1e-5, rtol=0)
    assert run.history[0]["process/parsed_frac"] == 1.0
    assert run.history[0]["process/step_score_mean"] == pytest.approx((2.4 + 0.8) * 2 / 10)


def _params(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("mode", ["step_advantage", "shaped_reward"])
def test_two_steps_with_the_process_signal_move_the_policy_differently(tmp_path, problems, prm_path, mode,
                                                                       monkeypatch):
    # G = 3 (one right, two wrong answers): with G = 2, GRPO's whitening maps any two distinct rewards to
    # -+1/sqrt2, so a shaped reward that keeps their order leaves the advantage (and the update) as it was; two
    # wrong answers with different step scores must now get different advantages. Compared on the advantages
    # the loss receives, not on the weights: Adam's first steps move each weight by about lr * sign(gradient),
    # so whether two runs' weights differ hinges on float rounding.
    seen = {}
    real_loss = losses.policy_loss
    group = dict(SMALL, group_size=3, train_batch_size=6, micro_batch_size=6)
    for name, extra in (("outcome", {}), ("process", dict(process_mode=mode, prm_path=prm_path, process_weight=1.0))):
        seen[name] = []
        monkeypatch.setattr(losses, "policy_loss", lambda logp, old, adv, mask, _s=seen[name], **kw: (
            _s.append((adv.clone(), mask.clone())), real_loss(logp, old, adv, mask, **kw))[1])
        model, tok = build_toy_model(seed=5)
        before = _params(model)
        cfg = RunConfig.from_preset("cpgd", run_dir=str(tmp_path / name), seed=0, **group, **extra)
        run = train(cfg, policy=model, processor=tok, problems=problems, progress=False)
        assert any(not torch.equal(p, before[n]) for n, p in _params(model).items()), name
    def per_response(adv, mask):  # a response's mean advantage (step advantages vary along the response)
        return (adv * mask).sum(1) / mask.sum(1) if adv.dim() == 2 else adv

    for (out_adv, mask), (proc_adv, _) in zip(seen["outcome"], seen["process"], strict=True):
        # Same rollouts in both runs (hand-built), compared as sorted sets; the process signal moves some response's advantage by far more
        # than rounding (the random-init PRM's step scores differ by ~1e-2 and more between texts).
        assert (per_response(proc_adv, mask).sort().values - per_response(out_adv, mask).sort().values).abs().max() > 1e-3
    metrics = run.history[-1]
    assert metrics["process/parsed_frac"] == 1.0 and 0.0 < metrics["process/step_score_mean"] < 1.0
