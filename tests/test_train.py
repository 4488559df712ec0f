"""Smoke and equivalence tests of the RL loop on a random-init toy model (no SFT cache needed)."""

from __future__ import annotations

import json

import pytest
import torch

from eureka_kit.config import RunConfig
from eureka_kit.data import toyworld
from eureka_kit.data.problems import ProblemStream
from eureka_kit.engine.loop import train
from eureka_kit.engine.runs import open_run
from eureka_kit.models import build_toy_model

SMALL = dict(rollout_batch_size=4, group_size=4, train_batch_size=8, micro_batch_size=8, max_len=12, num_steps=2,
             lr=1e-3)
DOCUMENTED_KEYS = ["reward/mean", "reward/accuracy", "reward/frac_zero_std", "reward/errors", "reward/timeouts",
                   "rollout/len_mean", "rollout/truncated_frac", "policy/entropy", "policy/ratio_max", "policy/clipfrac",
                   "policy/approx_kl", "loss/policy", "optim/grad_norm", "optim/lr", "perf/tokens_per_s"]


@pytest.fixture(scope="module")
def problems():
    return toyworld.load("train", "math", seed=0, n_per_level=4)


pytestmark = pytest.mark.usefixtures("parity_reward")  # tests/conftest.py: mixed rewards from a random-init model


def _params(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_train_updates_parameters_and_writes_the_run_directory(tmp_path, problems):
    torch.manual_seed(0)
    model, tok = build_toy_model(seed=0)
    before = _params(model)
    cfg = RunConfig.from_preset("cpgd", run_dir=str(tmp_path / "run"), update_epochs=2, **SMALL)
    run = train(cfg, policy=model, processor=tok, problems=problems, progress=False)

    changed = [n for n, p in model.named_parameters() if not torch.equal(p, before[n])]
    assert changed, "no parameter changed after two RL steps"
    assert len(run.history) == 2
    for key in DOCUMENTED_KEYS:
        assert key in run.history[-1], key
        assert torch.isfinite(torch.tensor(float(run.history[-1][key]))), key
    # The second update epoch is off-policy: the ratio must have moved away from 1 somewhere.
    assert max(h["policy/ratio_max"] for h in run.history) > 1.0

    rd = open_run(tmp_path / "run")
    assert rd.config()["config"]["preset"] == "cpgd"
    assert len(rd.metrics()) == 2 and rd.rollout_steps() == [0, 1]
    rollouts = rd.rollouts(1)
    assert len(rollouts) == SMALL["rollout_batch_size"] * SMALL["group_size"]
    row = rollouts.iloc[0]
    assert len(row.token_ids) == len(row.old_logp) == len(row.new_logp) == len(row.behavior_logp) == len(row.entropy) > 0
    assert all(0.0 <= e <= float(torch.log(torch.tensor(float(model.config.vocab_size)))) + 1e-4 for e in row.entropy)
    problems_table = rd.problems()
    assert set(problems_table.columns) >= {"step", "problem_id", "attempts", "successes"}
    assert problems_table.attempts.sum() == 2 * SMALL["rollout_batch_size"] * SMALL["group_size"]
    assert rd.checkpoints(), "final checkpoint missing"
    state = json.loads((rd.checkpoints()[-1] / "state.json").read_text())
    assert state["step"] == 1

    # Per-epoch snapshots: one per update epoch, the last is new_logp; epoch 1 already moved (8 of 16 responses
    # per minibatch: the second minibatch of epoch 1 sees the weights after the first optimizer step).
    import numpy as np

    from eureka_kit.workbench.arms import token_log_ratios

    epochs = [np.asarray(e) for e in row.epoch_logp]
    assert len(epochs) == 2 and np.array_equal(epochs[-1], np.asarray(row.new_logp))
    by_epoch = token_log_ratios(rd, by_epoch=True)
    assert sorted(by_epoch.epoch.unique()) == [1, 2]
    assert (by_epoch[by_epoch.epoch == 1].log_ratio.abs() > 0).any()
    last = token_log_ratios(rd)
    assert np.allclose(np.sort(by_epoch[by_epoch.epoch == 2].log_ratio), np.sort(last.log_ratio))


def test_behavior_logprobs_match_the_learner(tmp_path, problems):
    """Left padding, temperature and the chunked head must agree with generate's own sampling scores."""
    model, tok = build_toy_model(seed=1)
    cfg = RunConfig.from_preset("grpo", run_dir=str(tmp_path / "r"), temperature=0.7, **{**SMALL, "num_steps": 1})
    run = train(cfg, policy=model, processor=tok, problems=problems, progress=False)
    assert run.history[0]["mismatch/abs_mean"] < 1e-4


@pytest.mark.parametrize("preset", ["cpgd", "dapo", "grpo"])
def test_gradient_accumulation_is_exact(tmp_path, problems, preset, monkeypatch):
    """Micro-batches weighted by their aggregation units give the same gradient as one big batch.

    (Compared before the optimizer step: Adam's first step is ~lr*sign(g), which would amplify float noise
    in near-zero gradient entries.)"""
    captured = []
    original_step = torch.optim.AdamW.step

    def capture(self, *args, **kwargs):
        captured.append([p.grad.clone() for group in self.param_groups for p in group["params"]])
        return original_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", capture)
    for micro in (8, 4):
        model, tok = build_toy_model(seed=2)
        cfg = RunConfig.from_preset(preset, run_dir=str(tmp_path / f"m{micro}"),
                                    **{**SMALL, "num_steps": 1, "micro_batch_size": micro, "max_len": 20})
        train(cfg, policy=model, processor=tok, problems=problems, progress=False)
    # Each run makes 2 optimizer steps (16 responses / train_batch_size 8); compare the first of each.
    assert len(captured) == 4
    full, accumulated = captured[0], captured[2]
    scale = max(g.abs().max() for g in full)
    assert scale > 0
    for g_full, g_acc in zip(full, accumulated, strict=True):
        assert torch.allclose(g_full, g_acc, atol=1e-4 * scale, rtol=1e-4)


def test_online_filter_trains_only_on_mixed_groups(tmp_path, problems):
    model, tok = build_toy_model(seed=3)
    cfg = RunConfig.from_preset("grpo", run_dir=str(tmp_path / "f"), online_filter=True, filter_lower=0.1,
                                filter_upper=0.9, **{**SMALL, "num_steps": 2})
    run = train(cfg, policy=model, processor=tok, problems=problems, progress=False)
    for step in range(2):
        if run.history[step].get("optim/skipped"):
            continue
        rollouts = run.dir.rollouts(step)
        per_group = rollouts.groupby("group").accuracy.mean()
        assert ((per_group >= 0.1) & (per_group <= 0.9)).all(), "a filtered-out group reached the update"
        assert run.history[step]["reward/frac_zero_std"] == 0.0


def test_online_filter_refills_with_a_draw_sized_by_the_pass_rate(tmp_path, problems, monkeypatch):
    """Three groups in four are mixed (one right answer), the fourth all wrong: the first rollout of 16 prompts
    keeps 12 groups = 48 of the 64 rows; the refill draws 1.5 * 16 / (4 * 0.75) = 8 prompts, not 16, and fills."""
    from eureka_kit.data import rewards

    groups_seen = []

    def score_batch(completions, golds, **_):
        accuracy = [float(i % 4 == 0 and (len(groups_seen) + i // 4) % 4 != 3) for i in range(len(completions))]
        groups_seen.extend(range(len(completions) // 4))
        return [dict(accuracy=a, format=0.0, total=a, timeout=0.0) for a in accuracy]

    monkeypatch.setattr(rewards, "score_batch", score_batch)
    model, tok = build_toy_model(seed=3)
    cfg = RunConfig.from_preset("grpo", run_dir=str(tmp_path / "r"), online_filter=True,
                                **{**SMALL, "rollout_batch_size": 16, "train_batch_size": 64, "micro_batch_size": 32,
                                   "num_steps": 1})
    run = train(cfg, policy=model, processor=tok, problems=problems, progress=False)
    step = run.history[0]
    assert (step["filter/rollouts"], step["filter/prompts"], step["filter/short_batch"]) == (2, 24, 0.0)
    assert len(groups_seen) == 24
    assert len(run.dir.rollouts(0)) == 64  # a full batch: 48 rows from the first rollout, 16 from the refill


def test_all_groups_filtered_skips_the_update(tmp_path, problems, monkeypatch):
    from eureka_kit.data import rewards

    monkeypatch.setattr(rewards, "score_batch", lambda completions, golds, **_: [
        dict(accuracy=0.0, format=0.0, total=0.0, timeout=0.0) for _ in completions])
    model, tok = build_toy_model(seed=3)
    before = _params(model)
    cfg = RunConfig.from_preset("grpo", run_dir=str(tmp_path / "s"), online_filter=True, **{**SMALL, "num_steps": 1})
    run = train(cfg, policy=model, processor=tok, problems=problems, progress=False)
    assert run.history[0]["optim/skipped"] == 1.0
    assert run.history[0]["filter/rollouts"] == 8  # MAX_ROLLOUTS_PER_STEP refills, then give up
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_problem_stream_passes_over_a_skipped_problem_for_exactly_n_draws():
    pool = [{"id": f"q{i}"} for i in range(4)]
    stream = ProblemStream(pool, seed=0, skip_after_zero_variance=2)
    first = stream.take(4)  # one whole pass over the pool
    stream.skip([stream.index_of(first[0])])
    later = [p["id"] for p in stream.take(10)]  # two passes of 3 (it is passed over), then one of 4
    assert first[0]["id"] not in later[:6] and first[0]["id"] in later[6:]
    assert sorted(later[6:]) == ["q0", "q1", "q2", "q3"] and stream.skipped == 2

    unskipping = ProblemStream(pool, seed=0)  # N = 0: marks are ignored
    unskipping.skip([0, 1, 2, 3])
    assert len(unskipping.take(8)) == 8 and unskipping.skipped == 0


def test_skip_zero_variance_stops_drawing_problems_whose_group_had_no_signal(tmp_path, problems, monkeypatch):
    """Problems with an even-length answer score 1 on every response (zero variance); the others score 0, 1,
    0, 1 in their group of 4 (never zero variance). With a skip count larger than the run, a zero-variance
    problem is drawn once while the others keep coming round."""
    from eureka_kit.data import rewards
    from eureka_kit.engine import rollout

    def score_batch(completions, golds, **_):
        acc = [1.0 if len(g) % 2 == 0 else float(i % 2) for i, g in enumerate(golds)]
        return [dict(accuracy=a, format=0.0, total=a, timeout=0.0) for a in acc]

    monkeypatch.setattr(rewards, "score_batch", score_batch)
    drawn, real_generate = [], rollout.generate
    monkeypatch.setattr(rollout, "generate",
                        lambda policy, processor, batch, *a, **k: drawn.extend(p["id"] for p in batch)
                        or real_generate(policy, processor, batch, *a, **k))
    pool = problems[:8]
    assert {len(p["answer"]) % 2 for p in pool} == {0, 1}, "the pool needs both kinds of problems"
    model, tok = build_toy_model(seed=5)
    cfg = RunConfig.from_preset("grpo", run_dir=str(tmp_path / "z"), online_filter=True, skip_zero_variance=1000,
                                **{**SMALL, "num_steps": 4})
    run = train(cfg, policy=model, processor=tok, problems=pool, progress=False)
    even = [p["id"] for p in pool if len(p["answer"]) % 2 == 0]
    assert all(drawn.count(i) == 1 for i in even), (even, drawn)
    odd = [p["id"] for p in pool if len(p["answer"]) % 2]
    assert all(drawn.count(i) >= 2 for i in odd)  # the pool came round again, past the skipped ones
    assert sum(h["filter/skipped_draws"] for h in run.history) >= len(even)


@pytest.mark.parametrize("skip", [0, 2])
def test_resume_after_a_crash_reproduces_the_uninterrupted_run(tmp_path, problems, crash_on_call, skip):
    """Crash in step 3, resume from the step-1 checkpoint: metrics equal the uninterrupted run's (with
    skip_zero_variance, the skip counts travel in the checkpoint)."""
    import eureka_kit.engine.loop as train_module

    settings = {**SMALL, "num_steps": 4, "save_every": 2, "skip_zero_variance": skip}
    if skip:
        problems = problems[:6]  # small enough that skipped problems come round again within 4 steps
    model, tok = build_toy_model(seed=4)
    full = train(RunConfig.from_preset("grpo", run_dir=str(tmp_path / "a"), **settings), policy=model,
                 processor=tok, problems=problems, progress=False)

    restore = crash_on_call(train_module, "collect_batch", 4)  # a kill during step 3
    cfg = RunConfig.from_preset("grpo", run_dir=str(tmp_path / "b"), **settings)
    model, tok = build_toy_model(seed=4)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, policy=model, processor=tok, problems=problems, progress=False)
    assert len(open_run(tmp_path / "b").metrics()) == 3  # steps 0-2 logged, checkpoint at step 1
    restore()

    model, tok = build_toy_model(seed=99)  # different init: the checkpoint must overwrite it
    resumed = train(RunConfig.from_preset("grpo", run_dir=str(tmp_path / "b"), resume=True, **settings),
                    policy=model, processor=tok, problems=problems, progress=False)
    a, b = full.dir.metrics(), resumed.dir.metrics()
    assert list(b.step) == [0, 1, 2, 3]
    keys = [k for k in a.columns if not k.startswith("perf/")]
    for key in keys:
        assert a[key].tolist() == pytest.approx(b[key].tolist(), rel=1e-5, abs=1e-6, nan_ok=True), key
    assert len(resumed.dir.problems()) == len(full.dir.problems())
    if skip:
        assert a["filter/skipped_draws"].sum() > 0


def test_consecutive_nonfinite_steps_stop_the_run(tmp_path, problems, monkeypatch):
    import eureka_kit.algos.losses as losses_module

    real = losses_module.policy_loss

    def nan_loss(*args, **kwargs):
        loss, stats = real(*args, **kwargs)
        return loss * float("nan"), stats

    monkeypatch.setattr(losses_module, "policy_loss", nan_loss)
    model, tok = build_toy_model(seed=5)
    before = _params(model)
    cfg = RunConfig.from_preset("grpo", run_dir=str(tmp_path / "n"), max_bad_steps=2, **{**SMALL, "num_steps": 5})
    with pytest.raises(FloatingPointError, match="2 consecutive steps"):
        train(cfg, policy=model, processor=tok, problems=problems, progress=False)
    metrics = open_run(tmp_path / "n").metrics()
    assert len(metrics) == 2 and (metrics["optim/skipped_steps"] == 2).all()
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters()), "a NaN step changed weights"


def test_multimodal_step_on_the_tiny_vl_model_keeps_the_vision_tower_frozen(tmp_path):
    model, processor = build_toy_model(multimodal=True, seed=0)
    problems = toyworld.load("train", "math", seed=0, n_per_level=2, multimodal=True)
    assert problems[0]["image"] is not None
    vision = {n: p.detach().clone() for n, p in model.named_parameters() if "visual" in n}
    language = {n: p.detach().clone() for n, p in model.named_parameters() if "visual" not in n}
    assert vision and language
    cfg = RunConfig.from_preset("cpgd", model="toy-vl", multimodal=True, run_dir=str(tmp_path / "vl"),
                                **{**SMALL, "micro_batch_size": 4, "max_len": 9})
    run = train(cfg, policy=model, processor=processor, problems=problems, progress=False)
    assert all(torch.equal(p, vision[n]) for n, p in model.named_parameters() if "visual" in n)
    assert any(not torch.equal(p, language[n]) for n, p in model.named_parameters() if "visual" not in n)
    # Image placeholders are suppressed in sampling, so the only log-prob gap is their (small) mass.
    assert run.history[-1]["mismatch/abs_mean"] < 0.1


@pytest.mark.parametrize("preset", ["pg", "cpg", "pgd", "grpo_kl", "grpo_dual_clip", "rloo", "reinforce_pp",
                                    "reinforce_pp_baseline", "dr_grpo", "dapo", "cispo", "gspo"])
def test_every_preset_runs_two_steps_and_moves_the_policy(tmp_path, problems, preset):
    model, tok = build_toy_model(seed=6)
    before = _params(model)
    cfg = RunConfig.from_preset(preset, run_dir=str(tmp_path / preset), update_epochs=2,
                                **{**SMALL, "max_len": 20})  # > dapo's overlong buffer of 16
    run = train(cfg, policy=model, processor=tok, problems=problems, progress=False)
    assert any(not torch.equal(p, before[n]) for n, p in model.named_parameters()), preset
    assert all(torch.isfinite(torch.tensor(h["loss/total"])) for h in run.history if "loss/total" in h)
    assert max(h.get("policy/ratio_max", 1.0) for h in run.history) != 1.0  # the second epoch is off-policy


def test_checkpoint_loads_as_a_model_folder_and_runs_open(tmp_path, problems):
    from eureka_kit import models
    from eureka_kit.engine import runs

    model, tok = build_toy_model(seed=7)
    train(RunConfig.from_preset("grpo", run_dir=str(tmp_path / "c"), **{**SMALL, "num_steps": 1}),
          policy=model, processor=tok, problems=problems, progress=False)
    rd = runs.open(tmp_path / "c")
    loaded, loaded_tok = models.load(str(rd.checkpoints()[-1]))
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values(), strict=True))
    assert loaded_tok("What is 1+2?")["input_ids"] == tok("What is 1+2?")["input_ids"]


def test_micro_batch_stats_merge_by_tokens():
    from eureka_kit.engine.loop import _merge_stats

    merged = _merge_stats([
        {"policy/num_tokens": 30.0, "policy/clipfrac": 0.1, "policy/ratio_max": 2.0, "policy/ratio_min": 0.9},
        {"policy/num_tokens": 10.0, "policy/clipfrac": 0.5, "policy/ratio_max": 3.0, "policy/ratio_min": 0.5},
        {"policy/num_tokens": 0.0},  # a micro-batch whose tokens were all masked
    ])
    assert merged["policy/num_tokens"] == 40.0
    assert merged["policy/clipfrac"] == pytest.approx((30 * 0.1 + 10 * 0.5) / 40)
    assert merged["policy/ratio_max"] == 3.0 and merged["policy/ratio_min"] == 0.5
