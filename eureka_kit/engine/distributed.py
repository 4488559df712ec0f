"""Data-parallel `train()` and `sft()` under a `torchrun` / `deepspeed` launch (RANK, WORLD_SIZE set).

Batch sizes in `RunConfig` stay global, so one config is one experiment on any number of processes:
`rollout_batch_size` prompts and `train_batch_size` responses are split evenly over the ranks, while
`micro_batch_size` is per process. Every rank advances the same seeded problem stream and rolls out its
own contiguous slice of whole prompts (group advantages never cross ranks) with its own sampling seed
(seed + rank). Micro-batch losses are weighted by the *global* number of aggregation units of the
minibatch and gradients are summed over the ranks once per optimizer step, so an update equals the
one-process update on the concatenated batch. Metrics are combined across ranks (`combine_metrics`)
and rank 0 alone writes the run directory (`RankZeroRunDir`). `sft()` splits each step's `train_batch_size`
reference examples the same way and divides its loss by the token count summed over the ranks.

Departures: gradients are summed after local accumulation, as DDP does under `no_sync()` up to the last
micro-batch but without DDP's overlap with backward, because `train()` calls the backbone and the chunked
head directly (DDP only sees calls through the wrapper's forward). Batch-level statistics (whitening,
reinforce_pp) use each rank's own batch. Without WORLD_SIZE > 1 every function here is the identity.
"""

from __future__ import annotations

import atexit
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from eureka_kit.config import ConfigError
from eureka_kit.engine.runs import RunDir


@dataclass(frozen=True)
class World:
    """This process's place in the launch; `World()` is a single process."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, items: list) -> list:
        """This rank's contiguous slice of `items` (len divisible by size): rank 0 first, as one process sees them."""
        n = len(items) // self.size
        return items[self.rank * n:(self.rank + 1) * n]

    def any(self, flag: bool) -> bool:
        return flag if self.size == 1 else bool(self._reduce(float(flag), dist.ReduceOp.MAX))

    def min(self, value: int) -> int:
        return value if self.size == 1 else int(self._reduce(float(value), dist.ReduceOp.MIN))

    def sum(self, value: float) -> float:
        return value if self.size == 1 else self._reduce(float(value), dist.ReduceOp.SUM)

    def _reduce(self, value: float, op) -> float:
        t = torch.tensor([value], dtype=torch.float64, device=self._comm_device())
        dist.all_reduce(t, op=op)
        return float(t.item())

    def _comm_device(self) -> torch.device:
        return torch.device("cuda", self.local_rank) if dist.get_backend() == "nccl" else torch.device("cpu")

    def broadcast_parameters(self, module: torch.nn.Module) -> None:
        """Start every rank from rank 0's weights (what DDP does when it wraps a module)."""
        if self.size > 1:
            for tensor in [*module.parameters(), *module.buffers()]:
                dist.broadcast(tensor.data, src=0)

    def sync_gradients(self, params: list[torch.nn.Parameter], nonfinite: int) -> int:
        """Sum the accumulated gradients over ranks, in place; return the ranks' total count of non-finite
        micro-batch losses (one rank's NaN must make every rank skip the step, or they would drift apart).

        Gradients are summed, not averaged: the loss weights already divide by the global unit count.
        A parameter without a gradient contributes zeros (every rank must send the same buffers).
        """
        if self.size == 1:
            return nonfinite
        grads = []
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            grads.append(p.grad)
        flat = torch.cat([g.reshape(-1) for g in grads] + [torch.tensor([float(nonfinite)], device=grads[0].device,
                                                                         dtype=grads[0].dtype)])
        dist.all_reduce(flat)  # one collective per optimizer step
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()
        return int(flat[-1].item())

    def all_gather(self, items: list) -> list:
        """Every rank's `items` concatenated in rank order, on every rank."""
        if self.size == 1:
            return list(items)
        out = [None] * self.size
        dist.all_gather_object(out, items)
        return [x for part in out for x in part]

    def gather(self, items: list) -> list[list]:
        """Every rank's `items`, in rank order, on rank 0 ([] on the others)."""
        if self.size == 1:
            return [items]
        out = [None] * self.size if self.is_main else None
        dist.gather_object(items, out, dst=0)
        return out or []

    def reduce_metrics(self, metrics: dict[str, float], num_responses: int) -> dict[str, float]:
        """`combine_metrics` over the ranks (the same dict on every rank)."""
        if self.size == 1:
            return metrics
        everyone: list = [None] * self.size
        dist.all_gather_object(everyone, (metrics, num_responses))
        return combine_metrics([m for m, _ in everyone], [n for _, n in everyone])

    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier()

    def run_dir(self, path: str | Path) -> RunDir | RankZeroRunDir:
        return RunDir(path) if self.size == 1 else RankZeroRunDir(RunDir(path), self)


SINGLE_PROCESS = World()


def from_env(environ: dict[str, str] | None = None) -> World:
    env = os.environ if environ is None else environ
    return World(rank=int(env.get("RANK", 0)), size=int(env.get("WORLD_SIZE", 1)),
                 local_rank=int(env.get("LOCAL_RANK", 0)))


def check_batch_sizes(cfg, world_size: int, *, rollouts: bool = True) -> None:
    """ConfigError unless `cfg`'s global batch sizes split evenly over `world_size` processes (`World.shard`
    would drop the remainder). `rollouts=False` (`sft`): only `train_batch_size` is split, and its reference
    examples form no groups."""
    if cfg.train_batch_size % world_size or (rollouts and cfg.rollout_batch_size % world_size):
        sizes = "rollout_batch_size/train_batch_size" if rollouts else "train_batch_size"
        got = f"{cfg.rollout_batch_size}/{cfg.train_batch_size}" if rollouts else str(cfg.train_batch_size)
        raise ConfigError(f"{sizes}: must be divisible by the {world_size} processes (they are global sizes), "
                          f"got {got}")
    if rollouts and cfg.aggregation == "group-token-mean" and (cfg.train_batch_size // world_size) % cfg.group_size:
        raise ConfigError(f"train_batch_size: each of the {world_size} processes needs whole groups of "
                          f"{cfg.group_size} for aggregation='group-token-mean', got {cfg.train_batch_size}")


def init_world(cfg, *, rollouts: bool = True) -> tuple[World, torch.device]:
    """This launch's `World` (its process group initialised: nccl on CUDA, gloo on CPU) and this process's device.
    `rollouts`: which batch sizes the loop splits over the ranks (`check_batch_sizes`; False for `sft`)."""
    world = from_env()
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", world.local_rank) if cuda else torch.device("cpu")
    if world.size == 1:
        return world, device
    check_batch_sizes(cfg, world.size, rollouts=rollouts)
    if not dist.is_initialized():
        if cuda:
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if cuda else "gloo")  # rendezvous from MASTER_ADDR/MASTER_PORT
        # Tear the group down before interpreter exit: a live gloo group at exit can abort the process
        # ("terminate called without an active exception") after the run itself finished.
        atexit.register(lambda: dist.is_initialized() and dist.destroy_process_group())
    return world, device


# ---------------------------------------------------------------------------------------------
# Combining one step's metrics over ranks, consistently with `loop._merge_stats`: max of maxima, min of
# minima, sums of counts, means weighted by tokens (the loss statistics) or by responses.

SUMMED = ("policy/num_tokens", "perf/tokens_per_s")
PER_RESPONSE = ("reward/", "rollout/len_mean", "rollout/truncated_frac", "adv/mean")


def combine_metrics(per_rank: list[dict[str, float]], num_responses: list[int]) -> dict[str, float]:
    """One step's metrics over all ranks from each rank's metrics and number of responses.

    `*_max` -> max, `*_min` -> min; counts and throughputs (SUMMED) -> sum; other `perf/` times -> max
    (a step lasts as long as its slowest rank); `filter/` -> mean over ranks (each sees as many
    responses); `X/std` -> the pooled sample std of all responses (needs `X/mean`); per-response means
    (PER_RESPONSE) -> weighted by responses; everything else (loss statistics, entropy) -> weighted by
    `policy/num_tokens`, as `_merge_stats` does. A key some rank lacks comes from the ranks that have it;
    keys equal on every rank (step, lr, grad norm) stay as they are.
    """
    out: dict[str, float] = {}
    for key in dict.fromkeys(k for m in per_rank for k in m):
        have = [(m, n) for m, n in zip(per_rank, num_responses, strict=True) if key in m]
        values = [float(m[key]) for m, _ in have]
        if key.endswith("_max") or (key.startswith("perf/") and key not in SUMMED):
            out[key] = max(values)
        elif key.endswith("_min"):
            out[key] = min(values)
        elif key in SUMMED:
            out[key] = float(sum(values))
        elif key.startswith("filter/"):
            out[key] = float(np.mean(values))
        elif key.endswith("/std"):
            out[key] = _pooled_std([(n, float(m[key[:-3] + "mean"]), float(m[key])) for m, n in have])
        else:
            weights = [float(n) if key.startswith(PER_RESPONSE) else float(m.get("policy/num_tokens", 0.0))
                       for m, n in have]
            out[key] = float(np.average(values, weights=weights)) if sum(weights) > 0 else float(np.mean(values))
    return out


def _pooled_std(parts: list[tuple[int, float, float]]) -> float:
    """Sample std (Bessel) of the union of parts given as (count, mean, sample std)."""
    total = sum(n for n, _, _ in parts)
    if total < 2:
        return 0.0
    mean = sum(n * m for n, m, _ in parts) / total
    squares = sum((n - 1) * s * s + n * (m - mean) ** 2 for n, m, s in parts)
    return math.sqrt(squares / (total - 1))


# ---------------------------------------------------------------------------------------------


class RankZeroRunDir:
    """The run directory under several processes. Every rank makes the same calls in the same order;
    rank 0 alone writes, with the rollout rows and problem attempts of all ranks gathered to it.

    Reads go to the files. A RunDir method without a rule here raises, so a new writer can never be
    called from every rank by accident.
    """

    READS = ("path", "config", "metrics", "rollout_steps", "rollouts", "problems", "checkpoints")

    def __init__(self, run_dir: RunDir, world: World):
        self.local, self.world = run_dir, world

    def __getattr__(self, name: str) -> Any:
        if name in RankZeroRunDir.READS:
            return getattr(self.local, name)
        raise AttributeError(f"RankZeroRunDir.{name}: say which rank runs it under several processes "
                             f"(eureka_kit/engine/distributed.py)")

    def create(self, config: dict[str, Any]) -> RankZeroRunDir:
        if self.world.is_main:
            self.local.create(config)
        self.world.barrier()  # nobody reads the folder before rank 0 has (re)made it
        return self

    def log_metrics(self, metrics: dict[str, Any]) -> None:
        if self.world.is_main:
            self.local.log_metrics(metrics)

    def write_rollouts(self, step: int, rows: list[dict[str, Any]]) -> Path | None:
        parts, path = self.world.gather(rows), None
        if self.world.is_main:
            merged, num_samples, num_groups = [], 0, 0
            for part in parts:  # renumber sample and group so they index the step's whole batch
                merged += [{**row, "sample": row["sample"] + num_samples, "group": row["group"] + num_groups}
                           for row in part]
                num_samples += len(part)
                num_groups += 1 + max((row["group"] for row in part), default=-1)
            path = self.local.write_rollouts(step, merged)
        self.world.barrier()  # every rank may read the step's rollouts next (the collapse sentinels do)
        return path

    def log_warnings(self, warnings: list[dict[str, Any]]) -> None:
        if self.world.is_main:
            self.local.log_warnings(warnings)

    def add_problem_attempts(self, step: int, problem_ids: list[str], subjects: list[str],
                             correct: list[float]) -> None:
        parts = self.world.gather(list(zip(problem_ids, subjects, correct, strict=True)))
        if self.world.is_main:
            ids, subs, right = zip(*[row for part in parts for row in part], strict=True)
            self.local.add_problem_attempts(step, list(ids), list(subs), list(right))

    def flush_problems(self) -> None:
        if self.world.is_main:
            self.local.flush_problems()

    def save_checkpoint(self, *args, **kwargs) -> Path | None:
        path = self.local.save_checkpoint(*args, **kwargs) if self.world.is_main else None
        self.world.barrier()
        return path

    def truncate_after(self, step: int) -> None:
        if self.world.is_main:
            self.local.truncate_after(step)
        self.world.barrier()  # everyone then reads the truncated metrics
