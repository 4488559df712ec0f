"""Models and tokenizers: the toy char-level tokenizer, tiny Qwen2 / Qwen2.5-VL from configs, local loading.

`load(name)` returns `(model, tokenizer_or_processor)` the same way for:
  * a folder the engine built, e.g. the SFT'd toy base policy (`engine.base_policy.load_policy("toy")`),
  * "toy-vl"  a tiny random-init Qwen2.5-VL sharing the toy tokenizer, with an image processor,
  * a local folder holding a transformers text causal LM, Qwen2-VL / Qwen2.5-VL or InternVL
    (transformers-native classes only; never a hub id; safetensors only; `trust_remote_code` off by default).

torchvision is not a dependency: the stock Qwen2.5-VL processor needs it for its video processor, so an
image-only subclass is used when the stock one cannot be built.
"""

from __future__ import annotations

import json
import os
import string
from pathlib import Path
from typing import Any

import torch
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    AutoProcessor,
    AutoTokenizer,
    PreTrainedTokenizerFast,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2Config,
    Qwen2ForCausalLM,
)
from transformers.processing_utils import ProcessorMixin

PAD, EOS, BOS, UNK = "<|endoftext|>", "<|im_end|>", "<|im_start|>", "<unk>"
VISION_TOKENS = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
# Kept as *non-special* added tokens: one id each (cheap for a char model), but `decode(...,
# skip_special_tokens=True)` keeps them, so the reward sees the tags.
TAG_TOKENS = ["<think>", "</think>", "<answer>", "</answer>"]
CHARS = list(string.digits + string.ascii_letters + string.punctuation + " \n")

# Qwen-style template, but without a default system turn (a 500-char system prompt would dominate a
# char-level toy's sequences). Image items render as vision_start + image_pad + vision_end, which the
# Qwen2.5-VL processor then expands to the right number of image tokens.
CHAT_TEMPLATE = (
    "{%- for m in messages -%}"
    "{{ '<|im_start|>' + m['role'] + '\n' }}"
    "{%- if m['content'] is string -%}{{ m['content'] }}"
    "{%- else -%}{%- for c in m['content'] -%}"
    "{%- if c['type'] == 'image' -%}{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{%- elif c['type'] == 'text' -%}{{ c['text'] }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{ '<|im_end|>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\n' }}{%- endif -%}"
)


def build_char_tokenizer() -> PreTrainedTokenizerFast:
    """Char-level fast tokenizer: one id per printable char, plus chat/vision specials and think/answer tags."""
    specials = [PAD, EOS, BOS, UNK, *VISION_TOKENS]
    vocab = {tok: i for i, tok in enumerate(specials + TAG_TOKENS + CHARS)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    core.decoder = decoders.Fuse()
    core.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    core.add_tokens([AddedToken(t, special=False, normalized=False) for t in TAG_TOKENS])
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=UNK,
        additional_special_tokens=VISION_TOKENS, chat_template=CHAT_TEMPLATE, padding_side="left",
    )
    return tok


def _token_ids(tok) -> dict[str, int]:
    ids = {n: tok.convert_tokens_to_ids(t) for n, t in
           [("pad", PAD), ("eos", EOS), ("bos", BOS), ("image", "<|image_pad|>"), ("video", "<|video_pad|>"),
            ("vstart", "<|vision_start|>"), ("vend", "<|vision_end|>")]}
    return ids


TEXT_DIMS = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=3, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=256)


def toy_text_config(tok, **overrides: Any) -> Qwen2Config:
    """Tiny Qwen2 config (~0.45M params at the defaults; kept <= ~0.5M for minute-scale runs)."""
    ids = _token_ids(tok)
    return Qwen2Config(vocab_size=len(tok), tie_word_embeddings=True, bos_token_id=ids["bos"],
                       eos_token_id=ids["eos"], pad_token_id=ids["pad"], **{**TEXT_DIMS, **overrides})


def toy_vl_config(tok) -> Qwen2_5_VLConfig:
    """Tiny Qwen2.5-VL config (~0.55M params, vision tower ~0.26M); mrope sections sum to head_dim/2."""
    ids = _token_ids(tok)
    text = dict(vocab_size=len(tok), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                rope_parameters={"rope_type": "default", "rope_theta": 1e4, "mrope_section": [4, 6, 6]},
                bos_token_id=ids["bos"], eos_token_id=ids["eos"], pad_token_id=ids["pad"])
    vision = dict(depth=2, hidden_size=64, intermediate_size=128, num_heads=2, out_hidden_size=128,
                  patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=56,
                  fullatt_block_indexes=[1])
    return Qwen2_5_VLConfig(text_config=text, vision_config=vision, image_token_id=ids["image"],
                            video_token_id=ids["video"], vision_start_token_id=ids["vstart"],
                            vision_end_token_id=ids["vend"], tie_word_embeddings=True)


class ImageOnlyQwen25VLProcessor(Qwen2_5_VLProcessor):
    """Qwen2.5-VL processor without the video processor (which needs torchvision)."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)
        self.image_token, self.video_token = "<|image_pad|>", "<|video_pad|>"
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)


def toy_image_processor():
    """Small images only: 56x56 .. 112x112 pixels -> 4..16 merged image tokens."""
    from transformers import Qwen2VLImageProcessorPil
    return Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=112 * 112)


def build_toy_model(multimodal: bool = False, seed: int = 0, **overrides: Any):
    """Random-init toy model and its tokenizer (text) or processor (multimodal); deterministic in `seed`."""
    tok = build_char_tokenizer()
    torch.manual_seed(seed)
    if not multimodal:
        return Qwen2ForCausalLM(toy_text_config(tok, **overrides)).eval(), tok
    model = Qwen2_5_VLForConditionalGeneration(toy_vl_config(tok)).eval()
    return model, ImageOnlyQwen25VLProcessor(toy_image_processor(), tok, chat_template=CHAT_TEMPLATE)


def freeze_vision(model) -> int:
    """Freeze the vision tower (+ projector) parameters in place; returns how many tensors were frozen.

    Matches MM-EUREKA's `--freeze_prefix visual`: names containing 'visual' (Qwen-VL), 'vision_tower' or
    'multi_modal_projector' (InternVL / LLaVA-style).
    """
    keys = ("visual", "vision_tower", "multi_modal_projector", "vision_model")
    n = 0
    for name, p in model.named_parameters():
        if any(k in name for k in keys):
            p.requires_grad_(False)
            n += 1
    return n


def _is_vision_config(cfg) -> bool:
    return getattr(cfg, "vision_config", None) is not None


def _load_processor(path: Path, trust_remote_code: bool):
    """AutoProcessor if the folder has one; Qwen-VL image-only fallback without torchvision; else tokenizer."""
    has_proc = any((path / f).exists() for f in ("preprocessor_config.json", "processor_config.json"))
    if has_proc:
        try:
            return AutoProcessor.from_pretrained(path, trust_remote_code=trust_remote_code)
        except (ImportError, AttributeError, ValueError, OSError):
            cfg = json.loads((path / "config.json").read_text())
            if cfg.get("model_type") not in ("qwen2_vl", "qwen2_5_vl"):
                raise
            from transformers import Qwen2VLImageProcessorPil
            tok = _load_tokenizer(path, trust_remote_code)
            return ImageOnlyQwen25VLProcessor(Qwen2VLImageProcessorPil.from_pretrained(path), tok,
                                              chat_template=tok.chat_template)
    return _load_tokenizer(path, trust_remote_code)


def _load_tokenizer(path: Path, trust_remote_code: bool):
    # A plain tokenizers-backed tokenizer (the toy char tokenizer) must load as itself: AutoTokenizer would
    # pick the tokenizer class of config.json's model type (Qwen2) and replace its pre-tokenizer.
    tcfg = path / "tokenizer_config.json"
    if tcfg.exists() and json.loads(tcfg.read_text()).get("tokenizer_class") in (
            "TokenizersBackend", "PreTrainedTokenizerFast"):
        return PreTrainedTokenizerFast.from_pretrained(path)
    return AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)


def load(name: str, *, trust_remote_code: bool = False, seed: int = 0, dtype: torch.dtype | None = None):
    """(model, tokenizer_or_processor) for "toy-vl" or a local model folder.

    The name "toy" (the SFT'd base policy) is resolved by `eureka_kit.engine.base_policy.load_policy`: building
    it trains, and models sit below the engine.

    Args:
        name: "toy-vl" (random-init tiny Qwen2.5-VL) or a local path.
        trust_remote_code: passed to every transformers loader; keep False unless you trust the folder.
        seed: seed of the toy base policy / toy-vl init.
        dtype: torch dtype for local models (None = as saved).
    Returns:
        (model in eval mode, tokenizer for text models / processor for vision-language models).
    """
    if name == "toy":
        raise ValueError("model 'toy' is built by the engine: use eureka_kit.engine.base_policy.load_policy('toy')")
    if name == "toy-vl":
        return build_toy_model(multimodal=True, seed=seed)
    path = Path(os.path.expanduser(name))
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"model: {name!r} is neither 'toy-vl' nor a local folder with config.json "
                                "(hub ids are not supported: this workbench runs offline)")
    cfg = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    auto = AutoModelForImageTextToText if _is_vision_config(cfg) else AutoModelForCausalLM
    kwargs = dict(trust_remote_code=trust_remote_code, use_safetensors=True)
    if dtype is not None:
        kwargs["dtype"] = dtype
    model = auto.from_pretrained(path, **kwargs).eval()
    return model, _load_processor(path, trust_remote_code)


def tokenizer_of(proc):
    """The tokenizer inside a processor (or the tokenizer itself)."""
    return getattr(proc, "tokenizer", proc)
