"""Pre-collapse captures: a run whose sentinel fires keeps that step's batch and weights, and the capture replays to
the loss the step logged; captures are bounded in count and size."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from eureka_kit.algos import diagnostics
from eureka_kit.config import SENTINEL_KEYS, ConfigError, RunConfig
from eureka_kit.data import toyworld
from eureka_kit.engine.capture import load_capture, recompute_loss, weight_bytes
from eureka_kit.engine.logprobs import completion_logprobs
from eureka_kit.engine.loop import train
from eureka_kit.engine.runs import RunDir
from eureka_kit.models import build_toy_model
from eureka_kit.workbench.same_batch import compare_capture

B = 16  # 4 prompts x 4 responses
# grpo with token-mean: at ratio 1 its loss is -sum_k A_k |y_k| / #tokens, not 0 (CPG's value is 0 at r = 1)
SMALL = dict(rollout_batch_size=4, group_size=4, max_len=12, num_steps=2, lr=1e-3, aggregation="token-mean")
# every step has ratio_max >= 1 > 0.5: the ratio-tail sentinel fires at every step
FIRE = {"ratio_max": 0.5}


@pytest.fixture(scope="module")
def problems():
    return toyworld.load("train", "math", seed=0, n_per_level=4)


pytestmark = pytest.mark.usefixtures("parity_reward")  # tests/conftest.py: mixed rewards from a random-init model


def _train(tmp_path, problems, name, **overrides):
    model, tok = build_toy_model(seed=0)
    cfg = RunConfig.from_preset("grpo", run_dir=str(tmp_path / name), **{**SMALL, **overrides})
    return train(cfg, policy=model, processor=tok, problems=problems, progress=False)


def test_a_fired_sentinel_leaves_a_capture_that_replays_to_the_logged_loss(tmp_path, problems):
    run = _train(tmp_path, problems, "r", train_batch_size=B, micro_batch_size=B, sentinels=FIRE, max_captures=1)
    assert [h.get("capture/saved") for h in run.history] == [1.0, None]  # bounded: one capture, at the first step
    (path,) = run.dir.captures()
    cap = load_capture(path)
    assert cap.step == 0 and [w["kind"] for w in cap.meta["warnings"]] == ["ratio_tail"]
    warned = run.dir.warnings()
    assert set(warned.kind) == {"ratio_tail"} and sorted(warned.step) == [0, 1]  # the override reaches warnings.jsonl

    # the capture is that step's batch: the saved rollouts' pi_old, advantages and mask
    rows = run.dir.rollouts(0).sort_values("sample")
    for i, row in enumerate(rows.itertuples()):
        n = len(row.old_logp)
        np.testing.assert_array_equal(cap.tensors["old_logp"][i, :n].numpy(), np.asarray(row.old_logp, np.float32))
        np.testing.assert_array_equal(cap.tensors["behavior_logp"][i, :n].numpy(),
                                      np.asarray(row.behavior_logp, np.float32))
        assert cap.tensors["advantages"][i].item() == pytest.approx(row.advantage)
        assert int(cap.tensors["loss_mask"][i].sum()) == n
    assert cap.meta["metrics"]["loss/total"] == run.history[0]["loss/total"]

    # one epoch, one minibatch of one micro-batch: the start weights replay the step's logged loss
    start, _ = cap.policy("start")
    logged = run.history[0]["loss/total"]
    assert abs(logged) > 1e-3
    for micro in (0, None):
        loss, stats = recompute_loss(cap, start, micro=micro)
        assert loss.item() == pytest.approx(logged, rel=1e-5, abs=1e-7)
        assert stats["policy/ratio_max"] == pytest.approx(1.0, abs=1e-5)  # pi_old is these weights' log-probs
    same = compare_capture(cap, ["grpo"], at="start", aggregation="token-mean")
    assert same.objectives["grpo"].loss == pytest.approx(logged, rel=1e-5, abs=1e-7)
    # the end weights are the step's update: another loss, ratios away from 1
    end, _ = cap.policy("end")
    loss_end, stats_end = recompute_loss(cap, end)
    assert stats_end["policy/log_ratio_abs_max"] > 1e-3 and loss_end.item() != pytest.approx(logged, abs=1e-6)


def test_an_off_policy_step_replays_every_micro_batch_of_its_first_minibatch(tmp_path, problems):
    run = _train(tmp_path, problems, "o", num_steps=1, train_batch_size=8, micro_batch_size=4, update_epochs=2,
                 sentinels=FIRE)
    cap = load_capture(run.dir.captures()[0])
    micros = cap.meta["micro_batches"]
    # 2 epochs x 2 minibatches of 8 x 2 micro-batches of 4, each with its rows and its logged stats
    assert [(m["epoch"], m["minibatch"]) for m in micros] == [(e, mb) for e in (0, 1) for mb in (0, 1) for _ in (0, 1)]
    assert sorted(r for m in micros[:4] for r in m["rows"]) == list(range(B))
    assert cap.tensors["epoch_logp"].shape[0] == 2
    assert torch.equal(cap.tensors["epoch_logp"][-1], cap.tensors["new_logp"])
    start, _ = cap.policy("start")
    logp = completion_logprobs(start, cap.rollouts(), torch.arange(B), cap.config).detach()
    epoch0 = cap.tensors["epoch_logp"][0]
    for i in (0, 1):  # the first minibatch ran on the start weights: its log-probs and logged losses come back
        rows = micros[i]["rows"]
        mask = cap.tensors["loss_mask"][rows].bool()
        torch.testing.assert_close(logp[rows][mask], epoch0[rows][mask], rtol=0, atol=1e-5)
        loss, _ = recompute_loss(cap, start, micro=i)
        assert loss.item() == pytest.approx(micros[i]["stats"]["loss/total"], rel=1e-5, abs=1e-7)
    assert any(abs(m["stats"]["loss/total"]) > 1e-3 for m in micros[:2])
    # the second minibatch ran after an optimizer step: the start weights no longer give its log-probs or loss
    for i in (2, 3):
        rows = micros[i]["rows"]
        mask = cap.tensors["loss_mask"][rows].bool()
        assert (logp[rows][mask] - epoch0[rows][mask]).abs().max() > 1e-3
        assert micros[i]["stats"]["policy/ratio_max"] > 1 + 1e-4
        if cap.tensors["advantages"][rows].abs().sum() > 0:  # a group with mixed rewards has a loss to differ
            loss, stats = recompute_loss(cap, start, micro=i)
            assert stats["policy/ratio_max"] == pytest.approx(1.0, abs=1e-5)
            assert loss.item() != pytest.approx(micros[i]["stats"]["loss/total"], abs=1e-6)


def test_captures_can_be_turned_off_and_skip_a_model_over_the_byte_bound(tmp_path, problems):
    off = _train(tmp_path, problems, "off", num_steps=1, train_batch_size=B, micro_batch_size=B, sentinels=FIRE,
                 max_captures=0)
    assert off.dir.captures() == [] and not any(k.startswith("capture/") for k in off.history[0])
    big = _train(tmp_path, problems, "big", num_steps=1, train_batch_size=B, micro_batch_size=B, sentinels=FIRE,
                 capture_max_bytes=1000)
    assert big.dir.captures() == []
    assert big.history[0]["capture/skipped_bytes"] == weight_bytes(big.policy) > 1000
    # with the default thresholds an on-policy step (ratio 1) fires nothing and keeps nothing
    quiet = _train(tmp_path, problems, "quiet", num_steps=1, train_batch_size=B, micro_batch_size=B)
    assert quiet.dir.captures() == [] and "capture/saved" not in quiet.history[0]


def test_resume_forgets_captures_after_the_checkpoint(tmp_path):
    run = RunDir(tmp_path / "r").create({"seed": 0})
    for step in (1, 3):
        (run.path / "captures" / f"step_{step:06d}").mkdir(parents=True)
        (run.path / "captures" / f"step_{step:06d}" / "capture.json").write_text(json.dumps({"step": step}))
    run.truncate_after(2)
    assert [p.name for p in run.captures()] == ["step_000001"]


def test_sentinel_overrides_are_validated_and_match_the_diagnostics():
    assert set(SENTINEL_KEYS) == set(diagnostics.SENTINEL_DEFAULTS)
    with pytest.raises(ConfigError, match="unknown threshold 'ratio'"):
        RunConfig(sentinels={"ratio": 2.0})
    with pytest.raises(ConfigError, match="must be a number"):
        RunConfig(sentinels={"ratio_max": "2"})
    with pytest.raises(ConfigError, match="max_captures"):
        RunConfig(max_captures=-1)
