"""Data-parallel training on CPU: real processes talking over gloo.

The key test runs one RL step of the toy model in two processes and in one, on the same prompts and the
same sampled responses, and checks that the two give the same gradient, update, metrics and run directory.
GPU paths (nccl, bf16) are not exercised here.
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from eureka_kit.config import ConfigError, RunConfig
from eureka_kit.engine.distributed import World, check_batch_sizes, combine_metrics, from_env
from eureka_kit.engine.runs import open_run
from eureka_kit.models import build_toy_model

ROOT = Path(__file__).resolve().parents[1]

# ---------------------------------------------------------------------------------------------
# Pure parts.


def test_world_from_env_and_contiguous_shards():
    assert from_env({}) == World(rank=0, size=1, local_rank=0)
    world = from_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"})
    assert (world.rank, world.size, world.local_rank, world.is_main) == (3, 4, 1, False)
    prompts = list("abcdefgh")
    shards = [World(rank=r, size=4).shard(prompts) for r in range(4)]
    assert shards == [["a", "b"], ["c", "d"], ["e", "f"], ["g", "h"]]  # concatenated in rank order = one process


def test_batch_sizes_must_split_evenly_over_the_processes():
    # sft's examples form no groups: an aggregation over whole groups does not constrain its split
    sft_cfg = RunConfig.from_preset("sft", train_batch_size=8, group_size=8, aggregation="group-token-mean")
    check_batch_sizes(sft_cfg, 2, rollouts=False)
    with pytest.raises(ConfigError, match="whole groups of 8"):  # but train's minibatches hold whole groups
        check_batch_sizes(sft_cfg, 2)
    with pytest.raises(ConfigError, match="train_batch_size: must be divisible by the 3 processes"):
        check_batch_sizes(sft_cfg, 3, rollouts=False)  # World.shard would drop 2 of the 8 examples
    with pytest.raises(ConfigError, match="rollout_batch_size/train_batch_size"):
        check_batch_sizes(RunConfig.from_preset("grpo", rollout_batch_size=3, train_batch_size=8, group_size=2), 2)


def test_combine_metrics_by_hand():
    rank0 = {"reward/mean": 1.0, "reward/std": 0.0, "policy/clipfrac": 0.5, "policy/num_tokens": 10.0,
             "policy/ratio_max": 1.2, "policy/ratio_min": 0.9, "perf/step_s": 2.0, "perf/tokens_per_s": 100.0,
             "filter/kept_frac": 1.0, "rollout/len_mean": 4.0, "loss/policy": 2.0, "loss/only_here": 7.0}
    rank1 = {"reward/mean": 0.0, "reward/std": 0.0, "policy/clipfrac": 0.0, "policy/num_tokens": 30.0,
             "policy/ratio_max": 1.5, "policy/ratio_min": 0.8, "perf/step_s": 3.0, "perf/tokens_per_s": 50.0,
             "filter/kept_frac": 0.5, "rollout/len_mean": 10.0, "loss/policy": 1.0}
    out = combine_metrics([rank0, rank1], [2, 6])
    # rewards: rank 0 answered [1, 1], rank 1 [0] * 6 -> mean 2/8, sample std of [1, 1, 0, 0, 0, 0, 0, 0]
    assert out["reward/mean"] == pytest.approx(0.25)
    assert out["reward/std"] == pytest.approx(math.sqrt((2 * 0.75**2 + 6 * 0.25**2) / 7))
    assert out["policy/clipfrac"] == pytest.approx((0.5 * 10 + 0.0 * 30) / 40)  # token-weighted
    assert out["loss/policy"] == pytest.approx((2.0 * 10 + 1.0 * 30) / 40)
    assert out["policy/num_tokens"] == 40.0 and out["perf/tokens_per_s"] == 150.0  # sums
    assert out["policy/ratio_max"] == 1.5 and out["policy/ratio_min"] == 0.8
    assert out["perf/step_s"] == 3.0  # the slowest rank
    assert out["filter/kept_frac"] == pytest.approx(0.75)
    assert out["rollout/len_mean"] == pytest.approx((2 * 4.0 + 6 * 10.0) / 8)  # response-weighted
    assert out["loss/only_here"] == 7.0  # a key one rank lacks comes from the ranks that have it
    # One rank is the identity.
    assert combine_metrics([rank0], [2]) == pytest.approx(rank0)


# ---------------------------------------------------------------------------------------------
# Real processes.

CHILD = r'''
import json, os, sys, zlib
from pathlib import Path
import torch
torch.set_num_threads(1)
out = Path(sys.argv[1])
tag = f"rank{os.environ['RANK']}" if "WORLD_SIZE" in os.environ else "single"
from eureka_kit.data import rewards
from eureka_kit.engine import rollout, runs
from eureka_kit.engine.batch import Rollouts
# A random-init model never answers right: reward the parity of the length so groups have mixed rewards.
rewards.score_batch = lambda completions, golds, **_: [
    dict(accuracy=float(len(c) % 2), format=0.0, total=float(len(c) % 2), timeout=0.0) for c in completions]
# Sample each prompt on its own, seeded by its id: two ranks then draw exactly the responses one process draws.
sample = rollout.generate
def per_prompt(policy, processor, problems, cfg, generator=None, **kwargs):
    with (out / f"prompts-{tag}.txt").open("a") as f:
        f.write(" ".join(p["id"] for p in problems) + "\n")
    return Rollouts.concat([sample(policy, processor, [p], cfg, torch.Generator().manual_seed(zlib.crc32(p["id"].encode())),
                                   **kwargs) for p in problems])
rollout.generate = per_prompt
for name in ("create", "log_metrics", "write_rollouts", "add_problem_attempts", "save_checkpoint", "flush_problems"):
    def record(self, *args, _name=name, _real=getattr(runs.RunDir, name), **kwargs):
        with (out / f"writes-{tag}.txt").open("a") as f:
            f.write(_name + "\n")
        return _real(self, *args, **kwargs)
    setattr(runs.RunDir, name, record)
step = torch.optim.AdamW.step
def capture(self, *args, **kwargs):
    torch.save([p.grad.clone() for g in self.param_groups for p in g["params"]], out / f"grads-{tag}.pt")
    return step(self, *args, **kwargs)
torch.optim.AdamW.step = capture

from eureka_kit.config import RunConfig
from eureka_kit.models import build_toy_model
from eureka_kit.data import toyworld
from eureka_kit.engine.loop import train
problems = toyworld.load("train", "math", seed=0, n_per_level=4)
# token-mean: ranks hold different token counts, so the global unit count matters.
cfg = RunConfig.from_preset("grpo", run_dir=sys.argv[2], aggregation="token-mean", rollout_batch_size=4,
                            group_size=4, train_batch_size=16, micro_batch_size=4, max_len=12, num_steps=1, lr=1e-3)
model, tok = build_toy_model(seed=int(os.environ.get("RANK", 0)) + 5)  # rank 1's init must be overwritten by rank 0's
run = train(cfg, policy=model, processor=tok, problems=problems, progress=False)
torch.save({n: p.detach() for n, p in model.named_parameters()}, out / f"params-{tag}.pt")
(out / f"history-{tag}.json").write_text(json.dumps(run.history))
if tag != "single":  # metric reduction on hand-made numbers
    from eureka_kit.engine.distributed import from_env
    mine = [dict(m, **{"reward/std": 0.0}) for m in ({"reward/mean": 1.0, "policy/clipfrac": 0.5, "policy/num_tokens": 10.0,
            "policy/ratio_max": 1.2}, {"reward/mean": 0.0, "policy/clipfrac": 0.0, "policy/num_tokens": 30.0,
            "policy/ratio_max": 1.5})][int(os.environ["RANK"])]
    (out / f"reduced-{tag}.json").write_text(json.dumps(from_env().reduce_metrics(mine, num_responses=2)))
    rank = int(os.environ["RANK"])  # skip marks travel to every rank: rank 0 holds 2 problems' marks, rank 1 one
    (out / f"gathered-{tag}.json").write_text(json.dumps(from_env().all_gather([[10, 11], [20]][rank])))
print("DONE")
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(script: Path, out: Path, run_dir: Path, world: dict[str, str]) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]), OMP_NUM_THREADS="1", **world)
    return subprocess.Popen([sys.executable, str(script), str(out), str(run_dir)], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _two_and_one(tmp: Path, child: str) -> Path:
    """Run `child` in two gloo processes (run dir tmp/pair) and in one (tmp/single); returns tmp."""
    script = tmp / "child.py"
    script.write_text(child)
    port = str(_free_port())
    procs = [_start(script, tmp, tmp / "pair", dict(RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE="2",
                                                    MASTER_ADDR="127.0.0.1", MASTER_PORT=port)) for r in (0, 1)]
    procs.append(_start(script, tmp, tmp / "single", {}))
    for proc in procs:
        out, _ = proc.communicate(timeout=240)
        assert proc.returncode == 0 and "DONE" in out, out
    return tmp


@pytest.fixture(scope="module")
def two_vs_one(tmp_path_factory):
    """One RL step in two gloo processes and in one process, same prompts and sampled responses."""
    return _two_and_one(tmp_path_factory.mktemp("dp"), CHILD)


@pytest.mark.slow
def test_two_processes_make_the_same_update_as_one_on_the_concatenated_batch(two_vs_one):
    tmp = two_vs_one
    single, rank0, rank1 = (torch.load(tmp / f"grads-{t}.pt") for t in ("single", "rank0", "rank1"))
    scale = max(g.abs().max() for g in single)
    assert scale > 0
    for g1, g0, g_other in zip(single, rank0, rank1, strict=True):
        assert torch.equal(g0, g_other)  # both ranks hold the summed gradient
        assert torch.allclose(g0, g1, atol=1e-4 * scale, rtol=1e-4)
    before = {n: p.detach() for n, p in build_toy_model(seed=5)[0].named_parameters()}  # the children's init
    p_single, p0, p1 = (torch.load(tmp / f"params-{t}.pt") for t in ("single", "rank0", "rank1"))
    for (name, g1) in zip(p_single, single, strict=True):
        assert torch.equal(p0[name], p1[name]), name  # the ranks stay identical
        # Adam's first step is ~lr * sign(g): compare the update where the gradient is not float noise.
        clear = g1.abs() > 1e-3 * scale
        assert torch.allclose((p0[name] - before[name])[clear], (p_single[name] - before[name])[clear],
                              atol=1e-6), name
        assert not torch.equal(p0[name], before[name]), name


@pytest.mark.slow
def test_ranks_roll_out_disjoint_whole_groups_of_the_shared_stream(two_vs_one):
    tmp = two_vs_one
    ids = {t: (tmp / f"prompts-{t}.txt").read_text().split() for t in ("single", "rank0", "rank1")}
    assert len(ids["rank0"]) == len(ids["rank1"]) == 2 and not set(ids["rank0"]) & set(ids["rank1"])
    assert ids["rank0"] + ids["rank1"] == ids["single"]
    rollouts = open_run(tmp / "pair").rollouts(0)
    assert list(rollouts["sample"]) == list(range(16))
    by_group = rollouts.groupby("group").problem_id.agg(["nunique", "first", "size"])
    assert list(by_group["nunique"]) == [1] * 4 and list(by_group["size"]) == [4] * 4  # whole groups
    assert list(by_group["first"]) == ids["single"]
    pd.testing.assert_frame_equal(  # the same responses as one process, in the same order
        rollouts[["problem_id", "completion", "reward"]], open_run(tmp / "single").rollouts(0)[
            ["problem_id", "completion", "reward"]])


@pytest.mark.slow
def test_metrics_are_reduced_over_ranks_and_rank_zero_alone_writes(two_vs_one):
    tmp = two_vs_one
    # Hand-made metrics: rank 0 rewards [1, 1] on 10 tokens, rank 1 [0, 0] on 30 tokens.
    for tag in ("rank0", "rank1"):
        reduced = json.loads((tmp / f"reduced-{tag}.json").read_text())
        assert reduced == pytest.approx({"reward/mean": 0.5, "reward/std": math.sqrt(1 / 3), "policy/clipfrac": 0.125,
                                         "policy/num_tokens": 40.0, "policy/ratio_max": 1.5})
        assert json.loads((tmp / f"gathered-{tag}.json").read_text()) == [10, 11, 20]
    # The training metrics of two ranks equal one process's on the concatenated batch.
    single = json.loads((tmp / "history-single.json").read_text())[0]
    for tag in ("rank0", "rank1"):
        pair = json.loads((tmp / f"history-{tag}.json").read_text())[0]
        keys = [k for k in single if not k.startswith("perf/")]
        assert set(keys) <= set(pair)
        for key in keys:
            assert pair[key] == pytest.approx(single[key], rel=1e-4, abs=1e-6, nan_ok=True), key
    assert not (tmp / "writes-rank1.txt").exists()
    assert set((tmp / "writes-rank0.txt").read_text().split()) == {
        "create", "log_metrics", "write_rollouts", "add_problem_attempts", "save_checkpoint", "flush_problems"}
    rd = open_run(tmp / "pair")
    assert len(rd.metrics()) == 1 and rd.problems().attempts.sum() == 16 and len(rd.checkpoints()) == 1


@pytest.mark.slow
def test_launch_on_cpu_runs_two_processes_and_returns_the_run(tmp_path):
    import eureka_kit
    from eureka_kit.config import RunConfig

    model, tok = build_toy_model(seed=0)  # a model folder, so the test needs no cached base policy
    model.save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    cfg = RunConfig.from_preset("grpo", model=str(tmp_path / "model"), run_dir=str(tmp_path / "run"), num_steps=2,
                                rollout_batch_size=4, group_size=4, train_batch_size=8, micro_batch_size=8,
                                max_len=8, lr=1e-3)
    handle = eureka_kit.launch(cfg, gpus=2)
    run = handle.wait(timeout=240, progress=False)
    assert handle.poll() == 0
    assert [h["step"] for h in run.history] == [0, 1]
    assert all(math.isfinite(h["reward/mean"]) and h["policy/num_tokens"] > 0 for h in run.history)
    assert len(run.dir.rollouts(1)) == 16 and run.dir.checkpoints()  # both ranks' responses, one writer
    assert json.loads((tmp_path / "run.launch" / "config.json").read_text())["num_steps"] == 2
    assert "run directory" in (tmp_path / "run.launch" / "output.log").read_text()


# ---------------------------------------------------------------------------------------------
# sft() in two processes against one.

SFT_LR = 1e-3
SFT_CHILD = r'''
import json, os, sys
from pathlib import Path
import torch
torch.set_num_threads(1)
out = Path(sys.argv[1])
tag = f"rank{os.environ['RANK']}" if "WORLD_SIZE" in os.environ else "single"
from eureka_kit.engine import runs
for name in ("create", "log_metrics", "save_checkpoint"):
    def record(self, *args, _name=name, _real=getattr(runs.RunDir, name), **kwargs):
        with (out / f"sft-writes-{tag}.txt").open("a") as f:
            f.write(_name + "\n")
        return _real(self, *args, **kwargs)
    setattr(runs.RunDir, name, record)
grads, adam_step = [], torch.optim.AdamW.step
def capture(self, *args, **kwargs):
    grads.append([p.grad.clone() for g in self.param_groups for p in g["params"]])
    return adam_step(self, *args, **kwargs)
torch.optim.AdamW.step = capture

from eureka_kit.config import RunConfig
from eureka_kit.models import build_toy_model
from eureka_kit.engine.sft import sft
from eureka_kit.data import toyworld
problems = toyworld.load("train", "math", seed=0, n_per_level=4)
# 8 examples a step: one process runs 4 micro-batches of 2, each rank 2 of its 4 (the same micro-batches).
cfg = RunConfig.from_preset("sft", run_dir=sys.argv[2], train_batch_size=8, micro_batch_size=2, num_steps=2,
                            lr=''' + repr(SFT_LR) + r''', warmup_steps=0)
model, tok = build_toy_model(seed=int(os.environ.get("RANK", 0)) + 5)  # rank 1's init must be overwritten by rank 0's
run = sft(cfg, policy=model, processor=tok, problems=problems, progress=False)
torch.save({"grads": grads, "params": {n: p.detach() for n, p in model.named_parameters()}}, out / f"sft-{tag}.pt")
(out / f"sft-history-{tag}.json").write_text(json.dumps(run.history))
print("DONE")
'''


@pytest.fixture(scope="module")
def sft_two_vs_one(tmp_path_factory):
    """Two sft steps in two gloo processes and in one, on the same examples."""
    return _two_and_one(tmp_path_factory.mktemp("sft_dp"), SFT_CHILD)


def test_sft_in_two_processes_makes_the_one_process_updates(sft_two_vs_one):
    """Tolerances, from float32 rounding (unit roundoff u = 2^-24 ~ 6e-8):
    * gradients: two ranks sum the same per-token terms as one process, in another order (each rank's partial
      sum, then the all-reduce; rank-local padding changes the kernels' reduction lengths). Reordering a sum of
      N terms moves it by at most ~N u times their magnitude: with N ~ 140 completion tokens a step, 1e-5 of the
      largest gradient entry (observed: ~2e-7).
    * weights: Adam's update lr * m / sqrt(v) is invariant to the gradient's scale, so a relative gradient error
      r moves it by ~r lr a step. Where every step's gradient exceeds 1e-2 of its largest entry, r <= 1e-5 / 1e-2,
      so 2 steps differ by <= 2e-3 lr, plus the rounding of w + update (u |w| a step, each run). Where the gradient
      is at rounding level Adam's sign-like first step may flip, so those weights are not compared.
    * losses: a token mean of the same log-probs, reordered (rel 1e-5, as the gradients).
    """
    tmp = sft_two_vs_one
    single, rank0, rank1 = (torch.load(tmp / f"sft-{t}.pt") for t in ("single", "rank0", "rank1"))
    clear = None
    for g1, g0, g_other in zip(single["grads"], rank0["grads"], rank1["grads"], strict=True):  # per step
        scale = max(g.abs().max() for g in g1)
        assert scale > 0
        for a, b, c in zip(g1, g0, g_other, strict=True):
            assert torch.equal(b, c)  # both ranks hold the summed gradient
            torch.testing.assert_close(b, a, rtol=0, atol=1e-5 * scale)
        step_clear = [a.abs() > 1e-2 * scale for a in g1]
        clear = step_clear if clear is None else [x & y for x, y in zip(clear, step_clear, strict=True)]
    before = {n: p.detach() for n, p in build_toy_model(seed=5)[0].named_parameters()}  # the children's init
    u = 2.0**-24
    for (name, w0), keep in zip(before.items(), clear, strict=True):
        w_pair, w_single = rank0["params"][name], single["params"][name]
        assert torch.equal(w_pair, rank1["params"][name]), name  # the ranks stay identical
        assert not torch.equal(w_pair, w0), name
        tolerance = 2e-3 * SFT_LR + 4 * u * w_single.abs()
        assert ((w_pair - w_single).abs() <= tolerance)[keep].all(), name
    assert sum(int(k.sum()) for k in clear) > 1000  # enough weights are compared

    one = json.loads((tmp / "sft-history-single.json").read_text())
    for tag in ("rank0", "rank1"):
        pair = json.loads((tmp / f"sft-history-{tag}.json").read_text())
        assert [h["step"] for h in pair] == [0, 1]
        for mine, ref in zip(pair, one, strict=True):
            assert mine["sft/num_tokens"] == ref["sft/num_tokens"]  # the whole batch's, not a rank's share
            # a greedy choice at a near-tie may flip under rounding: one token's worth
            assert mine["sft/token_accuracy"] == pytest.approx(ref["sft/token_accuracy"], abs=1.01 / ref["sft/num_tokens"])
            for key in ("loss/sft", "optim/grad_norm", "optim/lr", "optim/skipped_steps"):
                assert mine[key] == pytest.approx(ref[key], rel=1e-5), key
    assert not (tmp / "sft-writes-rank1.txt").exists()  # rank 0 alone writes
    assert (tmp / "sft-writes-rank0.txt").read_text().split() == ["create", "log_metrics", "log_metrics",
                                                                  "save_checkpoint"]
    rd = open_run(tmp / "pair")
    assert len(rd.metrics()) == 2 and [c.name for c in rd.checkpoints()] == ["step_000001"]
