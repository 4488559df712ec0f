"""eureka_kit: stable rule-based RL (CPGD and its baselines) for (multimodal) language models."""

from eureka_kit.config import PRESETS, ConfigError, RunConfig
from eureka_kit.version import __version__

__all__ = ["RunConfig", "PRESETS", "ConfigError", "launch", "__version__"]


def __getattr__(name: str):
    if name == "launch":  # imported on first use: it pulls in torch and the training loop
        from eureka_kit.launcher import launch

        return launch
    raise AttributeError(f"module 'eureka_kit' has no attribute {name!r}")
