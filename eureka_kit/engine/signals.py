"""The loop's one hook for reward/advantage shaping: a signal object built from the config.

`train` asks `from_config(cfg, device)` for the run's signal once, before step 0 (None: outcome rewards only), and
calls `signal.apply(ro, scored, adv, mask, tokenizer)` every step after the outcome advantages. A feature that
shapes the signal (the PRM: `eureka_kit.prm.process_adv`) registers a builder under its `cfg.process_mode` names
when it is imported; the engine never imports a feature. The public `eureka_kit.train` imports the PRM package,
so `train(RunConfig.from_preset("cpgd_prm"))` works from there.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch
from torch import Tensor

from eureka_kit.config import ConfigError, RunConfig


class Signal(Protocol):
    def apply(self, ro, scored: dict[str, Tensor], adv: Tensor, mask: Tensor, tokenizer
              ) -> tuple[Tensor, dict[str, float]]:
        """Advantages to train on ((B,) or per-token (B, T)) from the step's rollouts `ro`, rewards `scored`,
        outcome advantages `adv` (B,) and loss mask (B, T); plus metrics to log."""
        ...


BUILDERS: dict[str, Callable[[RunConfig, torch.device], Signal]] = {}


def register(process_mode: str, build: Callable[[RunConfig, torch.device], Signal]) -> None:
    """Make `cfg.process_mode == process_mode` build its signal with `build(cfg, device)`."""
    BUILDERS[process_mode] = build


def from_config(cfg: RunConfig, device: torch.device) -> Signal | None:
    """The run's signal: None for process_mode "none", else the registered feature's."""
    if cfg.process_mode == "none":
        return None
    if cfg.process_mode not in BUILDERS:
        raise ConfigError(f"process_mode={cfg.process_mode!r}: no signal is registered under that name; import the "
                          "feature that provides it (`import eureka_kit.prm`, as `eureka_kit.train` does)")
    return BUILDERS[cfg.process_mode](cfg, device)
