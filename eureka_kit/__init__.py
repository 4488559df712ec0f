"""eureka_kit: stable rule-based RL (CPGD and its baselines) for (multimodal) language models."""

from eureka_kit.config import PRESETS, ConfigError, RunConfig

__version__ = "0.1.0"
__all__ = ["RunConfig", "PRESETS", "ConfigError", "__version__"]
