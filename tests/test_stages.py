"""Two-stage training in one config and one run directory (MM-Eureka-32B's recipe): the config's stages,
the per-step stage and KL coefficient, the reference model only where KL is on (taken at the stage's
start), the stage's own problems, one continuous metrics.jsonl, and resume across the stage boundary."""

from __future__ import annotations

import json
import math

import pytest
import torch

from eureka_kit.config import ConfigError, RunConfig
from eureka_kit.data import toyworld
from eureka_kit.engine.loop import train
from eureka_kit.engine.runs import open_run
from eureka_kit.models import build_toy_model

# One minibatch and one epoch per step: the policy at the start of a step is the one that rolled out.
SMALL = dict(rollout_batch_size=4, group_size=4, train_batch_size=16, micro_batch_size=16, max_len=12, lr=1e-3)
KL = 0.1
TWO_STAGES = ({"num_steps": 2}, {"num_steps": 2, "kl_coef": KL, "train_subject": "physics"})


@pytest.fixture(scope="module")
def problems():
    return toyworld.load("train", "math", seed=0, n_per_level=4)


pytestmark = pytest.mark.usefixtures("parity_reward")  # tests/conftest.py: mixed rewards from a random-init model


def test_preset_is_mm_eurekas_recipe_and_stage_configs_resolve():
    cfg = RunConfig.from_preset("mm_eureka_two_stage")
    assert cfg.stage_starts() == [0, 30] and cfg.num_steps == 50
    first, second = cfg.stage_config(0), cfg.stage_config(1)
    assert (first.kl_coef, second.kl_coef, second.kl_estimator) == (0.0, 1e-3, "k3")
    assert (first.train_subject, second.train_subject) == ("math", "physics")
    assert first.surrogate == second.surrogate == "ppo_clip" and second.num_steps == 50
    assert [cfg.stage_at(s) for s in (0, 29, 30, 49)] == [0, 0, 1, 1]
    assert RunConfig.from_dict(json.loads(cfg.to_json())) == cfg  # JSON turns stages into a list
    assert RunConfig.from_preset("grpo").stage_config(0) == RunConfig.from_preset("grpo")


@pytest.mark.parametrize("overrides, message", [
    (dict(num_steps=10), r"^num_steps: must equal the sum .*30 \+ 20 = 50"),
    (dict(stages=({"num_steps": 2, "lr": 1.0},), num_steps=2), r"^stages\[0\]: \['lr'\] cannot change"),
    (dict(stages=({"kl_coef": 1e-3},), num_steps=2), r"^stages\[0\]: needs its own num_steps"),
    (dict(stages=({"num_steps": 1}, {"num_steps": 1, "kl_coef": -1.0}), num_steps=2), r"^stages\[1\]: kl_coef"),
])
def test_bad_stages_name_the_stage_and_field(overrides, message):
    with pytest.raises(ConfigError, match=message):
        RunConfig.from_preset("mm_eureka_two_stage", **overrides)


def test_two_stages_log_stage_and_kl_and_use_a_reference_only_in_stage_two(tmp_path, problems):
    model, tok = build_toy_model(seed=0)
    cfg = RunConfig.from_preset("grpo", run_dir=str(tmp_path / "two"), stages=TWO_STAGES, num_steps=4, **SMALL)
    run = train(cfg, policy=model, processor=tok, problems=problems, progress=False)

    rd = open_run(tmp_path / "two")
    metrics = rd.metrics()  # one continuous metrics.jsonl
    assert list(metrics.step) == [0, 1, 2, 3] and len(run.history) == 4
    assert list(metrics.stage) == [0, 0, 1, 1]
    assert list(metrics["kl/coef"]) == [0.0, 0.0, KL, KL]
    # The reference KL (loss term and kl/ref_* diagnostics) exists only where a reference model does.
    assert metrics.loc[:1, ["loss/kl", "kl/ref_k3"]].isna().all().all()
    assert metrics.loc[2:, ["loss/kl", "kl/ref_k3"]].notna().all().all()
    # The reference is the policy at the start of stage 2: zero KL in its first step, then the policy moves.
    assert abs(metrics["kl/ref_k3"][2]) < 1e-6 and abs(metrics["kl/ref_k1"][2]) < 1e-6
    assert metrics["kl/ref_k3"][3] > 1e-6
    # Stage 2 trains on its own subject; stage 1 on the problems given to train().
    assert set(rd.rollouts(1).subject) == {"math"} and set(rd.rollouts(2).subject) == {"physics"}
    # ... drawn from a fresh shuffle of the whole physics set (its first rows are level 0), not from the first
    # len(problems) rows that the math stream's order would index.
    assert any("-L0-" not in pid for pid in rd.rollouts(2).problem_id)
    # The stage boundary is checkpointed (a resumed stage 2 reloads its reference there).
    assert [c.name for c in rd.checkpoints()] == ["step_000001", "step_000003"]
    assert rd.config()["config"]["stages"] == [dict(s) for s in TWO_STAGES]


def test_resume_inside_stage_two_equals_the_uninterrupted_run(tmp_path, problems, crash_on_call):
    """Kill in step 4, resume from the step-2 checkpoint (inside stage 2): the reference comes back from the
    stage-boundary checkpoint and the metrics equal the uninterrupted run's."""
    import eureka_kit.engine.loop as train_module

    stages = ({"num_steps": 2}, {"num_steps": 3, "kl_coef": KL, "train_subject": "physics"})
    settings = dict(SMALL, stages=stages, num_steps=5, save_every=3)  # checkpoints: 1 (boundary), 2, 4
    model, tok = build_toy_model(seed=4)
    full = train(RunConfig.from_preset("grpo", run_dir=str(tmp_path / "a"), **settings), policy=model,
                 processor=tok, problems=problems, progress=False)

    restore = crash_on_call(train_module, "collect_batch", 5)  # a kill during step 4
    model, tok = build_toy_model(seed=4)
    with pytest.raises(KeyboardInterrupt):
        train(RunConfig.from_preset("grpo", run_dir=str(tmp_path / "b"), **settings), policy=model, processor=tok,
              problems=problems, progress=False)
    restore()
    assert [c.name for c in open_run(tmp_path / "b").checkpoints()] == ["step_000001", "step_000002"]

    model, tok = build_toy_model(seed=99)  # another init: checkpoints must overwrite policy and reference
    resumed = train(RunConfig.from_preset("grpo", run_dir=str(tmp_path / "b"), resume=True, **settings),
                    policy=model, processor=tok, problems=problems, progress=False)
    a, b = full.dir.metrics(), resumed.dir.metrics()
    assert list(b.step) == [0, 1, 2, 3, 4] and list(b.stage) == [0, 0, 1, 1, 1]
    assert b["kl/ref_k3"][3] > 1e-6  # the resumed steps did run against a reference
    for key in [k for k in a.columns if not k.startswith("perf/")]:
        assert a[key].tolist() == pytest.approx(b[key].tolist(), rel=1e-5, abs=1e-6, nan_ok=True), key
    assert set(resumed.dir.rollouts(3).subject) == {"physics"}
    assert not any(math.isnan(v) for v in b["loss/kl"][2:])
    assert torch.isfinite(torch.tensor(b["loss/total"].tolist())).all()
