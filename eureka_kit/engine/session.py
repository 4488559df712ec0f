"""What every training loop of the engine (`loop.train`, `sft.sft`) does around its steps, in one place.

`start_policy` seeds this rank and readies the policy; the run directory opens fresh or resumed through
`checkpoints.open_run_dir`; `BadSteps` stops a run after too many consecutive steps without an optimizer update
(NaN/Inf losses or gradients are never stepped on); `finish` writes the last checkpoint and waits for every rank.
"""

from __future__ import annotations

from collections.abc import Callable

from tqdm import tqdm

from eureka_kit import models
from eureka_kit.config import RunConfig
from eureka_kit.engine.base_policy import load_policy
from eureka_kit.engine.checkpoints import save_checkpoint, seed_everything
from eureka_kit.engine.cpu_memory import keep_freed_memory


def start_policy(cfg: RunConfig, world, device, policy=None, processor=None):
    """Seed this rank, load the policy unless given, and ready it for training on `device` (same weights on every
    rank, vision tower frozen and gradient checkpointing on when the config asks). Returns (generator, policy,
    processor): each rank samples from its own generator, while the problem stream uses `cfg.seed`. On CPU, glibc
    keeps the memory freed between steps (`cpu_memory.keep_freed_memory`)."""
    if device.type == "cpu":
        keep_freed_memory()
    gen = seed_everything(cfg.seed + world.rank)
    if policy is None:
        policy, processor = load_policy(cfg.model, trust_remote_code=cfg.trust_remote_code, seed=cfg.seed)
    policy.to(device).train()
    world.broadcast_parameters(policy)
    if cfg.freeze_vision:
        models.freeze_vision(policy)
    if cfg.gradient_checkpointing:  # transformers 5.24 renamed it (the old name warns until v6)
        enable = getattr(policy, "activation_checkpointing_enable", None) or policy.gradient_checkpointing_enable
        enable()
    return gen, policy, processor


def progress_bar(cfg: RunConfig, start: int, world, progress: bool) -> tqdm:
    """The steps still to run, `start` .. `cfg.num_steps` - 1, as a bar on the main rank."""
    return tqdm(range(start, cfg.num_steps), desc=f"{cfg.preset}", disable=not (progress and world.is_main),
                dynamic_ncols=False, ncols=120, initial=start, total=cfg.num_steps)


class BadSteps:
    """Counts consecutive steps that made no optimizer update; `record` raises FloatingPointError at `limit`, with
    `message(count, step)` naming what to do (the loops point at their checkpoints)."""

    def __init__(self, limit: int, message: Callable[[int, int], str]):
        self.limit, self.message, self.count = limit, message, 0

    def record(self, bad: bool, step: int) -> None:
        """Count step `step` (`bad`: it made no update); at the limit raise."""
        self.count = self.count + 1 if bad else 0
        if self.count >= self.limit:
            raise FloatingPointError(self.message(self.count, step))


def finish(run_dir, cfg: RunConfig, start: int, policy, processor, learner, stream, gen, world) -> None:
    """The final checkpoint (unless the run was already complete when resumed), then a barrier: no rank exits,
    tearing down its gloo/nccl threads, while rank 0 still writes."""
    if start < cfg.num_steps:
        save_checkpoint(run_dir, cfg.num_steps - 1, policy, processor, learner, stream, gen)
    world.barrier()
