"""The DeepSpeed ZeRO learner for real on CPU: two processes over gloo against the plain one-process learner.

Runs in the DeepSpeed venv (`make test-deepspeed`); skipped where deepspeed is not installed
(under `make test-deepspeed` an import failure is an error). Each run is
two RL steps of the toy model on the same prompts and sampled responses, so ZeRO-2 and ZeRO-3 in two
processes must reproduce the one-process torch run's losses, gradient norms and weights; a ZeRO-2 run
resumed from its step-0 checkpoint must reproduce its own second step (the optimizer partitions reload); a
NaN loss on one rank makes every rank skip that step. `sft()` under ZeRO-2 and ZeRO-3 in two processes must
reproduce the one-process sft on the plain learner in the same way.
GPU paths (nccl, bf16, offload) are not exercised here.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from backends import import_backend

import_backend("deepspeed")
pytestmark = [pytest.mark.deepspeed, pytest.mark.slow]

import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
LR = 1e-3

CHILD = r'''
import json, os, sys, zlib
from pathlib import Path
import torch
torch.set_num_threads(1)
out, run_dir, zero_stage, resume = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4] == "resume"
tag = f"{Path(run_dir).name}-rank{os.environ.get('RANK', 0)}"
from eureka_kit.data import rewards
from eureka_kit.engine import rollout
from eureka_kit.engine.batch import Rollouts
# A random-init model never answers right: reward the parity of the length so groups have mixed rewards.
rewards.score_batch = lambda completions, golds, **_: [
    dict(accuracy=float(len(c) % 2), format=0.0, total=float(len(c) % 2), timeout=0.0) for c in completions]
sample = rollout.generate
def per_prompt(policy, processor, problems, cfg, generator=None, **kwargs):
    # each prompt seeded by its id: two ranks, or a resumed run, draw exactly the responses one run draws
    return Rollouts.concat([sample(policy, processor, [p], cfg, torch.Generator().manual_seed(zlib.crc32(p["id"].encode())),
                                   **kwargs) for p in problems])
rollout.generate = per_prompt
if os.environ.get("NAN_RANK") == os.environ.get("RANK", "0"):  # poison one micro-batch's loss on one rank
    from eureka_kit.algos import losses
    real_loss, calls = losses.policy_loss, []
    def poisoned(*args, **kwargs):
        loss, stats = real_loss(*args, **kwargs)
        calls.append(1)
        return (loss * float("nan") if len(calls) - 1 == int(os.environ["NAN_CALL"]) else loss), stats
    losses.policy_loss = poisoned

from eureka_kit.config import RunConfig
from eureka_kit.models import build_toy_model
from eureka_kit.data import toyworld
from eureka_kit.engine.loop import train
problems = toyworld.load("train", "math", seed=0, n_per_level=4)
cfg = RunConfig.from_preset("grpo", run_dir=run_dir, aggregation="token-mean", rollout_batch_size=4, group_size=4,
                            train_batch_size=16, micro_batch_size=4, max_len=12, num_steps=2, lr=''' + repr(LR) + r''',
                            lr_schedule="linear", save_every=1, zero_stage=zero_stage, resume=resume)
model, tok = build_toy_model(seed=int(os.environ.get("RANK", 0)) + 5)  # rank 1's init must be overwritten by rank 0's
run = train(cfg, policy=model, processor=tok, problems=problems, progress=False)
local = sum(p.data.numel() for p in model.parameters())  # ZeRO-3: this rank's partition only
(out / f"{tag}.json").write_text(json.dumps(dict(history=run.history, local_numel=local)))
print("DONE")
'''

# sft() on the same learners: two steps of 8 reference examples (each rank 4, in micro-batches of 2).
SFT_CHILD = r'''
import json, os, sys
from pathlib import Path
import torch
torch.set_num_threads(1)
out, run_dir, zero_stage = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
tag = f"{Path(run_dir).name}-rank{os.environ.get('RANK', 0)}"
from eureka_kit.config import RunConfig
from eureka_kit.models import build_toy_model
from eureka_kit.engine.sft import sft
from eureka_kit.data import toyworld
problems = toyworld.load("train", "math", seed=0, n_per_level=4)
cfg = RunConfig.from_preset("sft", run_dir=run_dir, train_batch_size=8, micro_batch_size=2, num_steps=2,
                            lr=''' + repr(LR) + r''', warmup_steps=0, lr_schedule="linear", save_every=1,
                            zero_stage=zero_stage)
model, tok = build_toy_model(seed=int(os.environ.get("RANK", 0)) + 5)  # rank 1's init must be overwritten by rank 0's
run = sft(cfg, policy=model, processor=tok, problems=problems, progress=False)
(out / f"{tag}.json").write_text(json.dumps(dict(history=run.history)))
print("DONE")
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(tmp: Path, run_dir: Path, zero_stage: int, processes: int, resume: bool = False,
            extra_env: dict[str, str] | None = None, child: str = CHILD) -> None:
    script = tmp / "child.py"
    script.write_text(child)
    port, procs = str(_free_port()), []
    for rank in range(processes):
        env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
        env.update(PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]), OMP_NUM_THREADS="1",
                   **(extra_env or {}))
        if processes > 1:
            env.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(processes), MASTER_ADDR="127.0.0.1",
                       MASTER_PORT=port)
        procs.append(subprocess.Popen([sys.executable, str(script), str(tmp), str(run_dir), str(zero_stage),
                                       "resume" if resume else "fresh"], env=env, cwd=ROOT, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    for proc in procs:
        out, _ = proc.communicate(timeout=600)  # the first DeepSpeed run JIT-compiles its CPU comm op (~1 min)
        assert proc.returncode == 0 and "DONE" in out, out[-4000:]


def _result(tmp: Path, name: str, rank: int = 0) -> dict:
    return json.loads((tmp / f"{name}-rank{rank}.json").read_text())


def _weights(run_dir: Path, step: int) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "checkpoints" / f"step_{step:06d}" / "model.safetensors")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("zero")
    _launch(tmp, tmp / "plain", zero_stage=0, processes=1)
    _launch(tmp, tmp / "zero2", zero_stage=2, processes=2)
    _launch(tmp, tmp / "zero3", zero_stage=3, processes=2)
    # Resume the ZeRO-2 run from its step-0 checkpoint, as if killed during step 1.
    shutil.copytree(tmp / "zero2", tmp / "resumed")
    shutil.rmtree(tmp / "resumed" / "checkpoints" / "step_000001")
    _launch(tmp, tmp / "resumed", zero_stage=2, processes=2, resume=True)
    return tmp


KEYS = ("loss/policy", "optim/grad_norm", "reward/mean", "policy/num_tokens", "optim/lr")


@pytest.mark.parametrize("stage", [2, 3])
def test_zero_in_two_processes_matches_the_plain_learner(runs, stage):
    plain, zero = _result(runs, "plain")["history"], _result(runs, f"zero{stage}")["history"]
    assert [h["step"] for h in zero] == [0, 1]
    for mine, ref in zip(zero, plain, strict=True):
        for key in KEYS:  # step 1's loss and grad norm are computed on the weights after step 0's update
            assert mine[key] == pytest.approx(ref[key], rel=1e-4, abs=1e-6), (stage, mine["step"], key)
    # the second update runs at half the lr (linear schedule): weights equal to the plain run's below show
    # the schedule reached the optimizer inside the engine
    assert plain[0]["optim/lr"] == pytest.approx(LR / 2)
    ref_w, zero_w = _weights(runs / "plain", 1), _weights(runs / f"zero{stage}", 1)
    assert ref_w.keys() == zero_w.keys()
    moved = max((zero_w[k] - _weights(runs / "plain", 0)[k]).abs().max().item() for k in ref_w)
    assert moved > 0.5 * LR  # the checkpoint holds updated weights (ZeRO-3: gathered from both ranks)
    # ZeRO sums the gradient in another order than the plain learner, so each gradient element carries a
    # relative error of ~1e-6 (fp32, a few thousand terms). Adam's step u = lr * m / (sqrt(v) + eps) moves by
    # |du| <= lr * eps * |dg| / (|g| + eps)^2, i.e. < 1e-6 lr for an element whose gradient is well above rounding
    # level; only an element whose gradient *is* rounding noise (cancellation, a near-zero bias gradient) gets a
    # noise-driven step of up to Adam's bound (~1.3 lr per step with these betas, two steps). Such elements are
    # few in the whole model but can be a large share of a small tensor (1 of a 64-element bias on AVX512), so
    # the share is counted over the model, and every element stays within two Adam step bounds.
    diffs = {k: (zero_w[k] - ref_w[k]).abs() for k in ref_w}
    noisy = sum(int((d > 1e-3 * LR).sum()) for d in diffs.values())
    assert noisy <= 1e-4 * sum(d.numel() for d in diffs.values()), {k: int((d > 1e-3 * LR).sum()) for k, d in
                                                                    diffs.items() if (d > 1e-3 * LR).any()}
    for k, d in diffs.items():
        assert d.max().item() < 2 * 2 * 1.3 * LR, k


def test_zero3_partitions_the_parameters_and_zero2_does_not(runs):
    full = _result(runs, "plain")["local_numel"]
    assert _result(runs, "zero2", 0)["local_numel"] == full
    parts = [_result(runs, "zero3", r)["local_numel"] for r in (0, 1)]
    assert all(p < full for p in parts), (parts, full)


def test_each_rank_saves_its_optimizer_partition_and_a_resumed_run_repeats_the_step(runs):
    zero_dir = runs / "zero2" / "checkpoints" / "step_000000" / "zero" / "zero"
    shards = sorted(p.name for p in zero_dir.iterdir() if "optim_states" in p.name)
    assert len(shards) == 2, sorted(p.name for p in zero_dir.iterdir())
    # no third copy of the weights: the module state DeepSpeed writes is left empty (the model is in
    # model.safetensors and, in fp32, in the optimizer partitions)
    model_states = zero_dir / "mp_rank_00_model_states.pt"
    assert model_states.stat().st_size < 0.1 * (zero_dir.parents[1] / "model.safetensors").stat().st_size
    resumed, whole = _result(runs, "resumed")["history"], _result(runs, "zero2")["history"]
    assert [h["step"] for h in resumed] == [0, 1]  # step 0 from the metrics file, step 1 trained again
    for key in KEYS:
        assert resumed[1][key] == pytest.approx(whole[1][key], rel=1e-5, abs=1e-7), key
    for k, v in _weights(runs / "zero2", 1).items():
        torch.testing.assert_close(_weights(runs / "resumed", 1)[k], v, rtol=0, atol=1e-6)


def test_a_nan_loss_on_one_rank_skips_the_step_on_every_rank(runs, tmp_path):
    # rank 1's first micro-batch of step 1 (2 micro-batches per rank and step) has a NaN loss; rank 0's are
    # finite. Both ranks must still join the gradient reduction (no hang), then drop the step together.
    _launch(tmp_path, tmp_path / "poisoned", zero_stage=2, processes=2, extra_env=dict(NAN_RANK="1", NAN_CALL="2"))
    for rank in (0, 1):
        history = _result(tmp_path, "poisoned", rank)["history"]
        assert [h["optim/skipped_steps"] for h in history] == [0.0, 1.0], rank
    before, after = _weights(tmp_path / "poisoned", 0), _weights(tmp_path / "poisoned", 1)
    assert all(torch.equal(after[k], before[k]) for k in before), "the skipped step moved the weights"
    clean = _weights(runs / "zero2", 0)  # step 0 is the unpoisoned run's step 0
    assert all(torch.equal(before[k], clean[k]) for k in clean)
    assert any(not torch.equal(_weights(runs / "zero2", 1)[k], clean[k]) for k in clean)  # unpoisoned: it moves


@pytest.fixture(scope="module")
def sft_runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("zero_sft")
    _launch(tmp, tmp / "plain", zero_stage=0, processes=1, child=SFT_CHILD)
    _launch(tmp, tmp / "zero2", zero_stage=2, processes=2, child=SFT_CHILD)
    _launch(tmp, tmp / "zero3", zero_stage=3, processes=2, child=SFT_CHILD)  # the head runs as a module call
    return tmp


@pytest.mark.parametrize("stage", [2, 3])
def test_sft_under_zero_in_two_processes_matches_the_plain_learner(sft_runs, stage):
    plain, zero = _result(sft_runs, "plain")["history"], _result(sft_runs, f"zero{stage}")["history"]
    assert [h["step"] for h in zero] == [0, 1]
    for mine, ref in zip(zero, plain, strict=True):
        assert mine["sft/num_tokens"] == ref["sft/num_tokens"]  # the whole batch's, summed over the ranks
        for key in ("loss/sft", "optim/grad_norm", "optim/lr"):
            assert mine[key] == pytest.approx(ref[key], rel=1e-4, abs=1e-6), (stage, mine["step"], key)
    ref_w, zero_w = _weights(sft_runs / "plain", 1), _weights(sft_runs / f"zero{stage}", 1)
    assert ref_w.keys() == zero_w.keys()
    moved = max((zero_w[k] - _weights(sft_runs / "plain", 0)[k]).abs().max().item() for k in ref_w)
    assert moved > 0.5 * LR
    # The bounds of test_zero_in_two_processes_matches_the_plain_learner: only weights whose gradient is at
    # rounding level may take a noise-driven Adam step, and none moves beyond two Adam step bounds.
    diffs = {k: (zero_w[k] - ref_w[k]).abs() for k in ref_w}
    noisy = sum(int((d > 1e-3 * LR).sum()) for d in diffs.values())
    assert noisy <= 1e-4 * sum(d.numel() for d in diffs.values()), (stage, noisy)
    for k, d in diffs.items():
        assert d.max().item() < 2 * 2 * 1.3 * LR, (stage, k)
