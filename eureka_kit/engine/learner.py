"""The optimizer side of `train()` and `sft()`: plain torch (one process, or data parallel under torchrun) or
DeepSpeed ZeRO-2/3, behind one small interface so the loops read the same for both.

`make_learner(policy, cfg, world, total_optimizer_steps)` returns a learner with
    backward(loss)          one micro-batch's weighted loss (sums into this minibatch's gradient)
    step(nonfinite) -> norm the minibatch's optimizer step; None when it was skipped (a NaN/Inf loss on any rank)
    lr                      the learning rate of the next step
    full_weights()          context in which every parameter is whole (ZeRO-3 gathers them; a no-op otherwise):
                            rollouts, vLLM weight pushes and checkpoint writes run inside it
    state() / save_sharded(folder) / restore(folder, state)   checkpoints and resume

DeepSpeed (`zero_stage` 2 or 3) wraps the policy in an engine with a client `torch.optim.AdamW` and the
loop's own LambdaLR schedule (DeepSpeed's config gets no optimizer or scheduler section). Departures from
DeepSpeed's defaults, each for the loop's exact-accumulation contract (distributed.py):
* The loop marks the gradient-accumulation boundary itself (the last micro-batch of a minibatch), because
  a minibatch's micro-batch count varies with the online filter; `gradient_accumulation_steps` stays 1.
* DeepSpeed averages gradients over data-parallel ranks; the loop's loss weights already divide by the
  global unit count, so each loss is multiplied by the world size (a sum, as `World.sync_gradients` does).
* ZeRO reduces gradients inside backward, a collective every rank must join: a NaN/Inf micro-batch loss is
  replaced by a zero loss on its rank (its gradient is lost, the others' survive) instead of skipping
  backward, and the step is skipped on every rank when any rank saw one, as in the torch path.
* bf16 stays torch autocast over fp32 weights (DeepSpeed's bf16 mode would cast the weights themselves).
Checkpoints: rank 0 writes the whole model (gathered under ZeRO-3) as in the torch path; each rank adds its
optimizer partition through `engine.save_checkpoint` under `<checkpoint>/zero/` (under ZeRO-2 without the module's
weights: resume loads them from model.safetensors).
"""

from __future__ import annotations

import contextlib
import math
import os
import socket
from pathlib import Path
from typing import Any

import torch

from eureka_kit.config import ConfigError, RunConfig
from eureka_kit.engine.checkpoints import load_weights
from eureka_kit.engine.distributed import World


def _optimizer(params: list[torch.nn.Parameter], cfg: RunConfig, device: torch.device) -> torch.optim.AdamW:
    return torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.adam_betas, weight_decay=cfg.weight_decay,
                             fused=device.type == "cuda")


def lr_lambda(cfg: RunConfig, total_steps: int):
    def factor(step: int) -> float:
        if cfg.warmup_steps and step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        progress = min(1.0, (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps))
        if cfg.lr_schedule == "cosine_with_min_lr":  # MM-EUREKA: min lr = 0.1 lr
            return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))
        if cfg.lr_schedule == "linear":
            return 1.0 - progress
        return 1.0

    return factor



def _schedule(optimizer, cfg: RunConfig, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:

    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg, total_steps))


class TorchLearner:
    """AdamW on this process's parameters; under torchrun, gradients summed over ranks before each step."""

    def __init__(self, policy, cfg: RunConfig, world: World, total_steps: int, device: torch.device):
        self.policy, self.cfg, self.world = policy, cfg, world
        self.params = [p for p in policy.parameters() if p.requires_grad]
        self.optimizer = _optimizer(self.params, cfg, device)
        self.scheduler = _schedule(self.optimizer, cfg, total_steps)

    def backward(self, loss: torch.Tensor, *, last: bool = False) -> bool:
        """Accumulate `loss`'s gradient; False (and no backward) for a NaN/Inf loss."""
        if not torch.isfinite(loss):
            return False
        loss.backward()
        return True

    def step(self, nonfinite: int) -> float | None:
        nonfinite = self.world.sync_gradients(self.params, nonfinite)  # the global minibatch's gradient
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip)
        if nonfinite or not torch.isfinite(grad_norm):  # never step on NaN/Inf
            self.optimizer.zero_grad(set_to_none=True)
            return None
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return grad_norm.item()

    @property
    def lr(self) -> float:
        return self.scheduler.get_last_lr()[0]

    def full_weights(self):
        return contextlib.nullcontext()

    def state(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}

    def save_sharded(self, folder: Path) -> None:
        pass

    def restore(self, folder: Path, state: dict[str, Any]) -> None:
        load_weights(self.policy, folder)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])


def deepspeed_config(cfg: RunConfig) -> dict[str, Any]:
    """The DeepSpeed config `train()` uses for `cfg` (no optimizer/scheduler: the loop brings its own)."""
    zero: dict[str, Any] = {"stage": cfg.zero_stage}
    if cfg.zero_stage == 3:
        # Partition every parameter (DeepSpeed keeps ones under 1e5 elements whole by default, which would be
        # every weight of the toy model); raise it for speed on large models through `deepspeed_overrides`.
        zero["stage3_param_persistence_threshold"] = 0
    config = {"train_micro_batch_size_per_gpu": cfg.micro_batch_size, "gradient_accumulation_steps": 1,
              "gradient_clipping": cfg.grad_clip, "zero_optimization": zero,
              "zero_allow_untested_optimizer": True, "steps_per_print": 2**31 - 1, "wall_clock_breakdown": False}
    return _merge(config, dict(cfg.deepspeed_overrides))


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


class ZeroLearner:
    """The policy inside a DeepSpeed engine at `cfg.zero_stage` (2: optimizer states and gradients
    partitioned over ranks; 3: parameters too)."""

    def __init__(self, policy, cfg: RunConfig, world: World, total_steps: int, device: torch.device):
        try:
            import deepspeed
        except ImportError as exc:
            raise ConfigError(f"zero_stage={cfg.zero_stage}: DeepSpeed is not installed (pip install "
                              f"'eureka-kit[gpu]', or on CPU: DS_BUILD_OPS=0 pip install --no-build-isolation "
                              f"deepspeed)") from exc
        self.deepspeed, self.policy, self.cfg, self.world = deepspeed, policy, cfg, world
        _init_deepspeed_distributed(deepspeed, device)
        self.params = [p for p in policy.parameters() if p.requires_grad]
        # not fused (device "cpu"): ZeRO steps this optimizer on its own flat fp32 partitions
        client = _optimizer(self.params, cfg, torch.device("cpu"))
        self.scheduler = _schedule(client, cfg, total_steps)  # ZeRO keeps the client's param_group dicts: lr follows
        self.engine, self.optimizer, _, _ = deepspeed.initialize(model=policy, model_parameters=self.params,
                                                                 optimizer=client, config=deepspeed_config(cfg))

    def backward(self, loss: torch.Tensor, *, last: bool = False) -> bool:
        finite = bool(torch.isfinite(loss))
        if not finite:  # every rank must join the reduction: a zero loss that still touches every parameter
            loss = sum(p.sum() for p in self.params) * 0.0
        self.engine.set_gradient_accumulation_boundary(last)
        self.engine.backward(loss * self.world.size, scale_wrt_gas=False)
        if self.cfg.zero_stage == 3:
            # engine.forward() would do this before the next micro-batch; train() calls the submodules itself,
            # and without it ZeRO-3 overwrites the accumulated gradient partition instead of adding to it
            self.engine.optimizer.clear_backward_seen_flag()
        return finite

    def step(self, nonfinite: int) -> float | None:
        if self.world.any(nonfinite > 0):  # the partial gradient is dropped with the step on every rank
            self.engine.optimizer.zero_grad()
            return None
        self.engine.step()
        norm = self.engine.get_global_grad_norm()
        self.scheduler.step()
        return None if norm is None else float(norm)

    @property
    def lr(self) -> float:
        return self.scheduler.get_last_lr()[0]

    def full_weights(self):
        if self.cfg.zero_stage < 3:
            return contextlib.nullcontext()
        return self.deepspeed.zero.GatheredParameters(list(self.policy.parameters()), modifier_rank=None)

    def state(self) -> dict[str, Any]:
        return {"scheduler": self.scheduler.state_dict()}  # the optimizer partitions go to save_sharded

    def save_sharded(self, folder: Path) -> None:
        if self.cfg.zero_stage == 2:
            # The whole model is already in model.safetensors and, in fp32, in the optimizer partitions; ZeRO-2's
            # module state would be a third full copy (ZeRO-3's holds only placeholders), so it is left empty.
            self.engine.module_state_dict = lambda *args, **kwargs: {}
        try:
            self.engine.save_checkpoint(str(folder / "zero"), tag="zero", save_latest=False)
        finally:
            self.engine.__dict__.pop("module_state_dict", None)
        self.world.barrier()

    def restore(self, folder: Path, state: dict[str, Any]) -> None:
        if not (folder / "zero" / "zero").is_dir():
            raise FileNotFoundError(f"checkpoint {folder}: no DeepSpeed optimizer state under zero/ (the run was "
                                    f"killed while writing it, or ran without ZeRO); delete this checkpoint to "
                                    f"resume from the one before")
        # ZeRO-2's saved module state is empty (save_sharded): the module gets its weights from model.safetensors
        from_safetensors = (lambda src, dst: load_weights(dst, folder)) if self.cfg.zero_stage == 2 else None
        self.engine.load_checkpoint(str(folder / "zero"), tag="zero", load_optimizer_states=True,
                                    load_lr_scheduler_states=False, custom_load_fn=from_safetensors)
        self.scheduler.load_state_dict(state["scheduler"])


def _init_deepspeed_distributed(deepspeed, device: torch.device) -> None:
    """DeepSpeed needs a process group even for one process (a notebook or test): make a 1-rank one."""
    import torch.distributed as dist

    if dist.is_initialized():
        return
    if "WORLD_SIZE" not in os.environ:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    deepspeed.init_distributed(dist_backend="nccl" if device.type == "cuda" else "gloo")


LEARNERS = {0: TorchLearner, 2: ZeroLearner, 3: ZeroLearner}


def make_learner(policy, cfg: RunConfig, world: World, total_steps: int, device: torch.device):
    return LEARNERS[cfg.zero_stage](policy, cfg, world, total_steps, device)
