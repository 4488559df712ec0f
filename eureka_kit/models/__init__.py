"""Models and tokenizers: the toy char tokenizer, tiny Qwen2 / Qwen2.5-VL builders, loading of local folders.

May import: `eureka_kit.config` only. No training here: the SFT'd toy base policy is built by the engine.
"""

from eureka_kit.models.loading import (
    CHARS,
    CHAT_TEMPLATE,
    TAG_TOKENS,
    TEXT_DIMS,
    VISION_TOKENS,
    ImageOnlyQwen25VLProcessor,
    build_char_tokenizer,
    build_toy_model,
    freeze_vision,
    load,
    tokenizer_of,
    toy_image_processor,
    toy_text_config,
    toy_vl_config,
)

__all__ = ["CHARS", "CHAT_TEMPLATE", "TAG_TOKENS", "TEXT_DIMS", "VISION_TOKENS", "ImageOnlyQwen25VLProcessor",
           "build_char_tokenizer", "build_toy_model", "freeze_vision", "load", "tokenizer_of",
           "toy_image_processor", "toy_text_config", "toy_vl_config"]
