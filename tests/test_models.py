"""Toy tokenizer, tiny models from configs, uniform local loading, VL generate + backward on CPU."""

import torch
from transformers import (
    InternVLConfig,
    InternVLForConditionalGeneration,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
)

from eureka_kit.data import toyworld
from eureka_kit.data.prompts import prompt_text
from eureka_kit.models import (
    build_char_tokenizer,
    build_toy_model,
    freeze_vision,
    load,
    toy_image_processor,
)


def test_char_tokenizer_round_trip_and_tags():
    tok = build_char_tokenizer()
    text = "<|im_start|>user\nWhat is 12+34?<|im_end|>\n<think>12+34=46</think><answer>46</answer>"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text
    assert len(tok(["<think>"], add_special_tokens=False)["input_ids"][0]) == 1
    # tags survive skip_special_tokens (the reward needs them); chat tokens do not
    assert tok.decode(ids, skip_special_tokens=True).endswith("<think>12+34=46</think><answer>46</answer>")
    assert len(tok) < 120


def test_toy_model_size_and_save_load(tmp_path):
    model, tok = build_toy_model(seed=0)
    assert sum(p.numel() for p in model.parameters()) <= 500_000
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    m2, t2 = load(str(tmp_path))
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), m2.state_dict().values(), strict=True))
    s = "user\nWhat is 1+2?"
    assert t2(s)["input_ids"] == tok(s)["input_ids"]  # the char pre-tokenizer survives reloading


def _vl_inputs(proc, n=2):
    rows = toyworld.generate("test", "math", 1, seed=0, multimodal=True)[:n]
    prompts = [prompt_text(proc, r, "none") for r in rows]
    return proc(text=prompts, images=[r["image"] for r in rows], return_tensors="pt", padding=True), rows


def test_toy_vl_generate_and_backward():
    model, proc = load("toy-vl")
    assert sum(p.numel() for p in model.parameters()) <= 600_000
    enc, _ = _vl_inputs(proc)
    out = model.generate(**enc, max_new_tokens=5, do_sample=True, pad_token_id=proc.tokenizer.pad_token_id)
    assert out.shape == (2, enc["input_ids"].shape[1] + 5)
    frozen = freeze_vision(model)
    assert frozen > 0 and all(not p.requires_grad for n, p in model.named_parameters() if "visual" in n)
    model.train()
    loss = model(**enc, labels=enc["input_ids"]).loss
    loss.backward()
    grads = [p.grad for n, p in model.named_parameters() if "visual" not in n]
    assert torch.isfinite(loss) and any(g is not None and g.abs().sum() > 0 for g in grads)


def test_load_qwen25_vl_folder(tmp_path):
    model, proc = build_toy_model(multimodal=True)
    model.save_pretrained(tmp_path)
    proc.save_pretrained(tmp_path)
    m2, p2 = load(str(tmp_path))
    assert type(m2).__name__ == "Qwen2_5_VLForConditionalGeneration"
    enc, _ = _vl_inputs(p2, 1)
    assert m2(**enc).logits.shape[-1] == len(proc.tokenizer)


def _text_cfg(tok):
    return dict(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256)


def test_load_qwen2_vl_folder(tmp_path):
    tok = build_char_tokenizer()
    ids = {k: tok.convert_tokens_to_ids(t) for k, t in
           [("image", "<|image_pad|>"), ("video", "<|video_pad|>"), ("vs", "<|vision_start|>"),
            ("ve", "<|vision_end|>")]}
    cfg = Qwen2VLConfig(
        text_config={**_text_cfg(tok), "rope_parameters": {"rope_type": "default", "rope_theta": 1e4,
                                                           "mrope_section": [2, 3, 3]}},
        vision_config=dict(depth=1, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2),
        image_token_id=ids["image"], video_token_id=ids["video"], vision_start_token_id=ids["vs"],
        vision_end_token_id=ids["ve"])
    Qwen2VLForConditionalGeneration(cfg).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    toy_image_processor().save_pretrained(tmp_path)
    model, proc = load(str(tmp_path))
    assert type(model).__name__ == "Qwen2VLForConditionalGeneration"
    assert proc.tokenizer.convert_tokens_to_ids("<|image_pad|>") == ids["image"]


def test_load_internvl_folder(tmp_path):
    tok = build_char_tokenizer()
    cfg = InternVLConfig(
        text_config={"model_type": "qwen2", **_text_cfg(tok)},
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=[28, 28], patch_size=[14, 14]),
        image_token_id=tok.convert_tokens_to_ids("<|image_pad|>"), image_seq_length=1)
    InternVLForConditionalGeneration(cfg).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    model, tok2 = load(str(tmp_path))
    assert type(model).__name__ == "InternVLForConditionalGeneration"
    assert tok2("a\nb")["input_ids"] == tok("a\nb")["input_ids"]
    assert freeze_vision(model) > 0
