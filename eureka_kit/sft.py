"""Public path of supervised fine-tuning (`from eureka_kit.sft import sft`); it lives in `eureka_kit.engine.sft`."""

from eureka_kit.engine.sft import sft

__all__ = ["sft"]
