"""Tasks: the toy world, MMK12 from a local folder, and the prompt templates (see each module)."""

from eureka_kit.tasks.prompts import SYSTEM_PROMPTS, apply_template, build_messages, prompt_text

__all__ = ["SYSTEM_PROMPTS", "build_messages", "apply_template", "prompt_text"]
