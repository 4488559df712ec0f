"""Checkpoints and resume, shared by `loop.train` and `sft.sft`: one path for both loops
(`session.py` holds the rest of what they share around their steps).

A checkpoint (`RunDir.save_checkpoint`) holds the whole model (rank 0 writes it; under ZeRO-3 from gathered
weights), the learner's optimizer and schedule state, and the loop's own state: its sampling generator, torch's
RNG and the problem stream's position. Under DeepSpeed every rank adds its optimizer partition
(`learner.save_sharded`). `open_run_dir` either creates the run directory or, with `resume`, loads the latest
checkpoint into the live learner, generator and stream and drops everything logged after it.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from eureka_kit.config import RunConfig


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)



def open_run_dir(cfg: RunConfig, world, learner, stream, gen: torch.Generator) -> tuple[Any, int, list[dict]]:
    """(run directory, first step to run, metric history so far) for `cfg.run_path()`.

    With `cfg.resume` and a checkpoint there: the latest checkpoint restored into `learner`, `stream` (the
    loop's `train.ProblemStream`) and `gen`, and the metrics logged up to it. Otherwise a fresh directory
    (rank 0 alone writes it under several processes: `world.run_dir`)."""
    run_path = cfg.run_path()
    if cfg.resume and world.run_dir(run_path).checkpoints():
        run_dir = world.run_dir(run_path)
        start = _restore(run_dir, learner, stream, gen) + 1
        return run_dir, start, run_dir.metrics().to_dict("records")
    return world.run_dir(run_path).create(cfg.to_dict()), 0, []


def save_checkpoint(run_dir, step: int, policy, processor, learner, stream, gen: torch.Generator) -> None:
    """Checkpoint `step` into `run_dir`: whole weights, learner state, generator/RNG/stream, sharded states."""
    run_dir.flush_problems()
    with learner.full_weights():  # ZeRO-3: gathered, so rank 0 writes the whole model
        run_dir.save_checkpoint(step, policy, state={**learner.state(), **_trainer_state(stream, gen)},
                                processor=processor)
    learner.save_sharded(run_dir.path / "checkpoints" / f"step_{step:06d}")


def load_weights(model, ckpt: Path) -> None:
    """Load a checkpoint's model.safetensors into `model` in place."""
    from safetensors.torch import load_file

    missing, unexpected = model.load_state_dict(load_file(ckpt / "model.safetensors"), strict=False)
    if unexpected or any("lm_head" not in k for k in missing):  # tied heads are saved once
        raise RuntimeError(f"checkpoint {ckpt}: weights do not match the model (missing {missing}, unexpected {unexpected})")
    model.tie_weights()


def _trainer_state(stream, gen: torch.Generator) -> dict[str, Any]:
    """Everything besides weights, optimizer and schedule that a resumed run needs to continue exactly."""
    return {"generator": gen.get_state(), "torch_rng": torch.get_rng_state(),
            "stream": {"order": stream.order, "cursor": stream.cursor, "epoch": stream.epoch,
                       "rng": stream.rng.getstate(), "skips": sorted(stream.skips.items()),
                       "skipped": stream.skipped}}


def _restore(run_dir, learner, stream, gen: torch.Generator) -> int:
    """Load the latest checkpoint into the live objects; drop logged steps after it. Returns its step."""
    ckpt = run_dir.checkpoints()[-1]
    state = torch.load(ckpt / "trainer.pt", weights_only=True)  # never unpickle arbitrary objects
    learner.restore(ckpt, state)  # weights, optimizer, schedule
    gen.set_state(state["generator"])
    torch.set_rng_state(state["torch_rng"])
    s = state["stream"]
    stream.order, stream.cursor, stream.epoch = list(s["order"]), s["cursor"], s["epoch"]
    stream.rng.setstate(_as_tuple(s["rng"]))
    stream.skips, stream.skipped = {int(i): int(n) for i, n in s.get("skips", [])}, int(s.get("skipped", 0))
    step = int(state["step"])
    run_dir.truncate_after(step)
    return step


def _as_tuple(x):
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x
