#!/usr/bin/env python3
"""GPU benchmark of eureka_kit on a random-init Qwen2-0.5B-shaped model.

Sections (each in its own child process with a wall-clock cap; a crash, OOM or timeout in one
section is recorded and the next one still runs; results are written after every measurement):

  generation  transformers `generate` (dynamic cache) vs `cache_implementation="static"` (first call
              includes torch.compile, reported separately from the second), and eureka_kit's
              `rollout.generate_hf` (static cache on CUDA, behaviour log-probs recorded every step), on the
              same 256 prompts x 256 new tokens (forced with min_new_tokens for the raw `generate` runs),
              bf16 weights. tokens/s = B * new tokens / s.
  learner     one optimizer step on 32 x 1024 tokens: fp32 master weights, bf16 autocast, gradient
              checkpointing, fused AdamW, loss = losses.policy_loss(preset cpgd). Variants:
                eureka          engine.logprobs.completion_logprobs (backbone -> bf16 fused head,
                                ops.token_logprobs_from_hidden)
                naive           model(...).logits -> fp32 log_softmax -> gather
                eureka_tf32     as `eureka`, with TF32 matmuls allowed (only if time is left)
              MFU = 6*N*tokens_per_s / peak, peak measured with an 8192^3 bf16 matmul; also
              8*N*tokens_per_s / 790e12 (convention with checkpointing: fwd 2N + recomputed
              fwd 2N + bwd 4N). N counts every parameter once (tied embedding = LM head); attention-score
              FLOPs are not counted.
  rl_ours     eureka_kit `train()` (preset cpgd, bf16, gradient checkpointing), 64 prompts x 4 samples x
              256 max new tokens, one optimizer step per RL step, 2 steps. fp32 master weights; on CUDA the
              rollouts run on a bf16 copy (sampler_dtype="bfloat16", refreshed in place every step) as a bf16
              rollout engine would, where TRL generates from the fp32 model under bf16 autocast. train() has
              no min-length knob: lengths are natural (a random-init model with a 151,936-token vocabulary
              almost never emits EOS, so every rollout runs to max_len). The final checkpoint write is stubbed
              out.
  rl_trl      TRL GRPOTrainer (no vLLM) on the same model/prompts/reward (data.rewards.make_reward_fn), the
              same batch shape, bf16; 2 optimizer steps; skipped with a reason if trl/datasets do not import.

Per-step seconds for both RL sections are wall-clock deltas between the ends of consecutive steps (the
first from the start of train()/trainer.train()); the package's own perf/step_s and TRL's step_time
are recorded too. Headline: rl_step_trl_over_ours = TRL step / ours step (last step, i.e. warm).

  python benchmarks/gpu_bench.py --out DIR          # GPU sizes; ~5 min on an H200
  python benchmarks/gpu_bench.py --smoke --out DIR  # tiny sizes, CPU is fine (tests every code path)
Writes DIR/gpu_bench.json (and DIR/section_*.json), prints a table; the last line is the headline ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

SECTIONS = ("generation", "learner", "rl_ours", "rl_trl")
# Wall-clock caps in seconds per section (child start-up and imports included). Time a section does not
# use is passed on to the next ones; the sum is the default --budget. Expected on an H200:
# generation ~150 s (static first call ~30 s, default ~22 s, generate_hf ~40 s cold + warm, static second ~3 s),
# learner ~25 s, rl_ours ~70 s (~30 s per step), rl_trl ~95 s (imports ~15 s, ~40 s per step).
CAPS = {"generation": 170, "learner": 40, "rl_ours": 85, "rl_trl": 95}
SMOKE_CAPS = {"generation": 240, "learner": 120, "rl_ours": 180, "rl_trl": 240}

SIZES = {
    "full": dict(hidden=896, layers=24, heads=14, kv_heads=2, intermediate=4864, vocab=151_936,
                 gen_batch=256, gen_tokens=256, learn_batch=32, learn_len=1024, learn_warmup=1, learn_steps=3,
                 rl_prompts=64, rl_gens=4, rl_tokens=256, rl_micro=64, rl_steps=2, matmul=8192,
                 chunk=1024),
    "smoke": dict(hidden=64, layers=2, heads=4, kv_heads=2, intermediate=128, vocab=1024,
                  gen_batch=8, gen_tokens=16, learn_batch=4, learn_len=64, learn_warmup=1, learn_steps=2,
                  rl_prompts=4, rl_gens=2, rl_tokens=16, rl_micro=4, rl_steps=2, matmul=512, chunk=32),
}
NOMINAL_PEAK_FLOPS = 790e12  # H200/H100 dense bf16 peak (nominal)


def log(section: str, msg: str) -> None:
    print(f"[gpu_bench {time.strftime('%H:%M:%S')} {section}] {msg}", flush=True)


class Recorder:
    """A dict mirrored to a JSON file after every update (atomic), so a killed section keeps its numbers."""

    def __init__(self, path: str):
        self.path, self.data = path, {}

    def set(self, key, value):
        self.data[key] = value
        self.flush()
        return value

    def flush(self):
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.data, f, indent=2, default=str)
        os.replace(tmp, self.path)


# =============================================================================================
# Child side: helpers (torch is imported only in children)


def _torch():
    import torch
    return torch


def device():
    torch = _torch()
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def sync():
    torch = _torch()
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn):
    sync()
    t0 = time.perf_counter()
    out = fn()
    sync()
    return out, time.perf_counter() - t0


def env_info() -> dict:
    torch = _torch()
    import transformers
    info = {"python": sys.version.split()[0], "torch": torch.__version__, "transformers": transformers.__version__,
            "cuda_available": torch.cuda.is_available(), "cpu_threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(device=torch.cuda.get_device_name(0), gpu_mem_gb=round(props.total_memory / 2**30, 1),
                    sm_count=props.multi_processor_count, cuda=torch.version.cuda)
    else:
        info["device"] = "cpu"
    return info


def attempt(rec: Recorder, key: str, fn, section: str):
    """Run one measurement; record its result or its error under `key`; never raise."""
    torch = _torch()
    log(section, f"{key} ...")
    try:
        result = fn()
        rec.set(key, result)
        log(section, f"{key}: {json.dumps(result, default=str)[:300]}")
        return result
    except Exception as e:  # noqa: BLE001 - a failed measurement must not lose the others
        oom = isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in str(e).lower()
        err = {"error": f"{type(e).__name__}: {str(e)[:500]}", "oom": oom,
               "traceback": traceback.format_exc()[-2500:]}
        rec.set(key, err)
        log(section, f"{key} FAILED: {err['error'][:300]}")
        return None
    finally:
        import gc
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def build_model(sz: dict, dtype, seed: int = 0):
    """Random-init Qwen2 of the given shape on the benchmark device, and the char tokenizer."""
    torch = _torch()
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from eureka_kit.models import build_char_tokenizer

    tok = build_char_tokenizer()
    cfg = Qwen2Config(vocab_size=sz["vocab"], hidden_size=sz["hidden"], num_hidden_layers=sz["layers"],
                      num_attention_heads=sz["heads"], num_key_value_heads=sz["kv_heads"],
                      intermediate_size=sz["intermediate"], max_position_embeddings=4096,
                      tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id)
    torch.manual_seed(seed)
    with torch.device(device()):
        model = Qwen2ForCausalLM(cfg)
    model = model.to(dtype).eval()
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    return model, tok


def problems_for(n: int, tok=None) -> list[dict]:
    """n toy-world training problems (cycled). With `tok`: only problems whose prompt has the most common
    token length, so every RL step sees the same prompt width (no shape-driven recompiles in either trainer)."""
    from eureka_kit.data import toyworld
    pool = toyworld.load("train", "math", seed=0)
    if tok is not None:
        from collections import Counter

        from eureka_kit.data.prompts import prompt_text
        lens = [len(tok(prompt_text(tok, p, "none"), add_special_tokens=False)["input_ids"]) for p in pool]
        modal = Counter(lens).most_common(1)[0][0]
        pool = [p for p, n_tok in zip(pool, lens, strict=True) if n_tok == modal]
    return [pool[i % len(pool)] for i in range(n)]


def _problem_info(tok, problems) -> dict:
    from eureka_kit.data.prompts import prompt_text
    return {"distinct": len({p["id"] for p in problems}),
            "prompt_tokens": len(tok(prompt_text(tok, problems[0], "none"), add_special_tokens=False)["input_ids"]),
            "example": prompt_text(tok, problems[0], "none")}


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


# =============================================================================================
# (a) generation


def section_generation(rec: Recorder, sz: dict, args) -> None:
    torch = _torch()
    from eureka_kit.config import RunConfig
    from eureka_kit.engine import rollout

    S = "generation"
    dev = device()
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    model, tok = build_model(sz, dtype)
    B, T = sz["gen_batch"], sz["gen_tokens"]
    problems = problems_for(B)
    ids, attn, _ = rollout.encode_prompts(tok, problems, "none", False, 512)
    ids, attn = ids.to(dev), attn.to(dev)
    rec.set("config", dict(batch=B, new_tokens=T, prompt_len=ids.shape[1], dtype=str(dtype),
                           params=n_params(model), sampling="do_sample, temperature 1, top_p 1, top_k 0"))
    base = dict(do_sample=True, temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=T,
                pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    forced = dict(base, min_new_tokens=T)

    def gen(**kw):
        def run():
            torch.manual_seed(0)
            out, dt = timed(lambda: model.generate(input_ids=ids, attention_mask=attn, **kw))
            seq = out.sequences if hasattr(out, "sequences") else out
            new = seq.shape[1] - ids.shape[1]
            return {"seconds": dt, "new_tokens": new, "tokens_per_s": B * new / dt}
        return run

    # Warm-up: CUDA context, cuBLAS handles, sdpa kernels (tiny, dynamic cache).
    attempt(rec, "warmup", lambda: (model.generate(input_ids=ids[:8], attention_mask=attn[:8], **dict(base, max_new_tokens=2)),
                                    {"ok": True})[1], S)
    attempt(rec, "static_first_call", gen(**forced, cache_implementation="static"), S)
    attempt(rec, "static_second_call", gen(**forced, cache_implementation="static"), S)
    attempt(rec, "dynamic_default", gen(**forced), S)

    def hf():
        cfg = RunConfig.from_preset("cpgd", max_len=T, group_size=2, train_batch_size=2, micro_batch_size=2,
                                    prompt_template="none", temperature=1.0, top_p=1.0)
        g = torch.Generator().manual_seed(0)
        ro, dt = timed(lambda: rollout.generate_hf(model, tok, problems, cfg, g, num_samples=1))
        steps = ro.completion_ids.shape[1]
        return {"seconds": dt, "decode_steps": steps, "tokens_per_s": B * steps / dt,
                "valid_tokens_per_s": float(ro.completion_mask.sum()) / dt,
                "mean_len": float(ro.lengths.float().mean()),
                "note": "the package rollout: static cache on CUDA, behaviour log-probs recorded per step, no min length"}

    # Its prompts are padded to a multiple of 64 on CUDA (other shapes than the raw calls'): the first call
    # compiles the static-cache decode graph again, the second is the warm rate.
    attempt(rec, "eureka_generate_hf_first_call", hf, S)
    attempt(rec, "eureka_generate_hf", hf, S)

    def tps(key):
        r = rec.data.get(key) or {}
        return r.get("tokens_per_s")

    ratios = {}
    for name, (a, b) in {"static_over_dynamic": ("static_second_call", "dynamic_default"),
                         "generate_hf_over_dynamic": ("eureka_generate_hf", "dynamic_default"),
                         "static_over_generate_hf": ("static_second_call", "eureka_generate_hf")}.items():
        if tps(a) and tps(b):
            ratios[name] = tps(a) / tps(b)
    rec.set("ratios", ratios)


# =============================================================================================
# (b) learner


def section_learner(rec: Recorder, sz: dict, args) -> None:
    torch = _torch()
    from eureka_kit.algos import losses, ops
    from eureka_kit.config import RunConfig
    from eureka_kit.engine.batch import Rollouts
    from eureka_kit.engine.logprobs import completion_logprobs

    S = "learner"
    dev = device()
    cuda = dev.type == "cuda"
    deadline = time.monotonic() + args.cap - 5

    # Peak bf16 matmul throughput (fp32 on CPU, where bf16 GEMMs are not representative).
    def peak():
        n = sz["matmul"]
        dt_ = torch.bfloat16 if cuda else torch.float32
        a = torch.randn(n, n, device=dev, dtype=dt_)
        b = torch.randn(n, n, device=dev, dtype=dt_)
        for _ in range(3):
            a @ b
        reps = 10
        _, dt = timed(lambda: [a @ b for _ in range(reps)])
        return {"n": n, "dtype": str(dt_), "tflops": 2 * n**3 * reps / dt / 1e12}

    pk = attempt(rec, "matmul_peak", peak, S) or {}
    peak_flops = (pk.get("tflops") or float("nan")) * 1e12

    model, tok = build_model(sz, torch.float32)
    model.train()
    model.gradient_checkpointing_enable()
    N = n_params(model)
    Bl, L = sz["learn_batch"], sz["learn_len"]
    cfg = RunConfig.from_preset("cpgd", bf16=cuda, gradient_checkpointing=True, group_size=4, train_batch_size=Bl,
                                micro_batch_size=Bl, max_len=L - 1, logprob_chunk_size=sz["chunk"])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6, betas=(0.9, 0.95), fused=True)
    g = torch.Generator(device=dev).manual_seed(0)
    ids = torch.randint(0, sz["vocab"], (Bl, L), device=dev, generator=g)
    ro = Rollouts(prompt_ids=ids[:, :1].cpu(), prompt_mask=torch.ones(Bl, 1, dtype=torch.long),
                  completion_ids=ids[:, 1:].cpu(), completion_mask=torch.ones(Bl, L - 1, dtype=torch.long),
                  behavior_logp=torch.zeros(Bl, L - 1), texts=[""] * Bl, finish_reasons=["length"] * Bl,
                  problem_index=torch.arange(Bl), problems=[{"id": str(i)} for i in range(Bl)])
    rows = torch.arange(Bl)
    adv = torch.randn(Bl, device=dev, generator=g)
    mask = torch.ones(Bl, L - 1, device=dev)
    attn = torch.ones(Bl, L, dtype=torch.long, device=dev)
    pos = torch.arange(L, device=dev).expand(Bl, L)
    rec.set("config", dict(batch=Bl, seq_len=L, tokens_per_step=Bl * L, params=N, preset="cpgd",
                           chunk_size=sz["chunk"], bf16_autocast=cuda, gradient_checkpointing=True,
                           optimizer="AdamW fused", master_weights="fp32",
                           mfu_formulas={"mfu_6N": "6*N*tokens_per_s / measured bf16 matmul peak",
                                         "mfu_8N_nominal": "8*N*tokens_per_s / 790e12"}))

    def logp_eureka():
        return completion_logprobs(model, ro, rows, cfg)

    def logp_naive():
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=cuda):
            logits = model(input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=False).logits
        return ops.naive_token_logprobs(logits[:, :-1], ids[:, 1:])

    def one_step(logp_fn):
        logp = logp_fn()
        loss, _stats = losses.policy_loss(logp, logp.detach(), adv, mask, cfg=cfg)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    def variant(logp_fn, tf32=False):
        def run():
            old = torch.backends.cuda.matmul.allow_tf32
            torch.backends.cuda.matmul.allow_tf32 = tf32
            try:
                for _ in range(sz["learn_warmup"]):
                    timed(lambda: one_step(logp_fn))
                if cuda:
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats()
                    base = torch.cuda.memory_allocated()
                times = []
                for _ in range(sz["learn_steps"]):
                    times.append(timed(lambda: one_step(logp_fn))[1])
                    if time.monotonic() > deadline:
                        break
            finally:
                torch.backends.cuda.matmul.allow_tf32 = old
                opt.zero_grad(set_to_none=True)
            step_s = sorted(times)[len(times) // 2]
            tps = Bl * L / step_s
            out = {"step_s_median": step_s, "step_s": times, "tokens_per_s": tps,
                   "mfu_6N": 6 * N * tps / peak_flops if peak_flops == peak_flops else None,
                   "mfu_8N_nominal": 8 * N * tps / NOMINAL_PEAK_FLOPS}
            if cuda:
                out.update(peak_gb=torch.cuda.max_memory_allocated() / 2**30, base_gb=base / 2**30,
                           peak_above_base_gb=(torch.cuda.max_memory_allocated() - base) / 2**30)
            return out
        return run

    attempt(rec, "eureka", variant(logp_eureka), S)
    attempt(rec, "naive", variant(logp_naive), S)
    if time.monotonic() < deadline - 10:
        attempt(rec, "eureka_tf32", variant(logp_eureka, tf32=True), S)
    else:
        rec.set("eureka_tf32", {"skipped": "not enough time left in the section"})

    def get(k, f):
        r = rec.data.get(k) or {}
        return r.get(f)

    cmp = {}
    if get("naive", "step_s_median") and get("eureka", "step_s_median"):
        cmp["eureka_time_over_naive"] = get("eureka", "step_s_median") / get("naive", "step_s_median")
    if get("naive", "peak_above_base_gb") and get("eureka", "peak_above_base_gb"):
        cmp["naive_peak_over_eureka"] = get("naive", "peak_above_base_gb") / get("eureka", "peak_above_base_gb")
    rec.set("comparison", cmp)


# =============================================================================================
# (c) one full RL step: eureka_kit train() vs TRL GRPOTrainer


def section_rl_ours(rec: Recorder, sz: dict, args) -> None:
    torch = _torch()
    from eureka_kit.config import RunConfig
    from eureka_kit.engine import runs
    from eureka_kit.engine.loop import train

    S = "rl_ours"
    cuda = torch.cuda.is_available()
    model, tok = build_model(sz, torch.float32)
    P, G, T, steps = sz["rl_prompts"], sz["rl_gens"], sz["rl_tokens"], sz["rl_steps"]
    run_dir = tempfile.mkdtemp(prefix="gpu_bench_rl_")
    cfg = RunConfig.from_preset("cpgd", rollout_batch_size=P, group_size=G, max_len=T, train_batch_size=P * G,
                                micro_batch_size=sz["rl_micro"], bf16=cuda, gradient_checkpointing=True,
                                num_steps=steps, lr=1e-6, prompt_template="none", run_dir=run_dir, seed=0,
                                logprob_chunk_size=sz["chunk"], sampler_dtype="bfloat16" if cuda else "same")
    rec.set("config", dict(prompts=P, generations=G, max_new_tokens=T, steps=steps, micro_batch=sz["rl_micro"],
                           preset="cpgd", bf16=cuda, gradient_checkpointing=True, params=n_params(model),
                           sampler_dtype=cfg.sampler_dtype,
                           min_length="none: train() has no min-length knob; natural lengths",
                           checkpoint="final save_checkpoint stubbed out (not part of a step)"))
    marks: list[float] = []
    steps_out: list[dict] = []
    orig_log = runs.RunDir.log_metrics

    def log_metrics(self, metrics):
        sync()
        marks.append(time.perf_counter())
        prev = marks[-2] if len(marks) > 1 else t_start
        steps_out.append({"step": metrics.get("step"), "wall_s": marks[-1] - prev,
                          "perf_step_s": metrics.get("perf/step_s"), "rollout_s": metrics.get("perf/rollout_s"),
                          "len_mean": metrics.get("rollout/len_mean"),
                          "truncated_frac": metrics.get("rollout/truncated_frac"),
                          "reward_mean": metrics.get("reward/mean")})
        rec.set("steps", steps_out)
        log(S, f"step {metrics.get('step')}: wall {marks[-1] - prev:.2f}s perf/step_s {metrics.get('perf/step_s')}")
        return orig_log(self, metrics)

    runs.RunDir.log_metrics = log_metrics
    runs.RunDir.save_checkpoint = lambda self, *a, **k: None
    problems = problems_for(2000, tok)
    rec.set("problems", _problem_info(tok, problems))

    def go():
        nonlocal t_start
        t_start = time.perf_counter()
        run = train(cfg, policy=model, processor=tok, problems=problems, progress=False)
        sync()
        return {"train_wall_s": time.perf_counter() - t_start, "steps_done": len(run.history)}

    t_start = time.perf_counter()
    attempt(rec, "train", go, S)
    if steps_out:
        rec.set("step_s_first", steps_out[0]["wall_s"])
        rec.set("step_s_last", steps_out[-1]["wall_s"])


def section_rl_trl(rec: Recorder, sz: dict, args) -> None:
    torch = _torch()
    S = "rl_trl"
    try:
        import datasets  # noqa: F401
        import trl
        from trl import GRPOConfig, GRPOTrainer
    except Exception as e:  # noqa: BLE001
        rec.set("skipped", f"trl/datasets not importable: {type(e).__name__}: {e}")
        log(S, rec.data["skipped"])
        return
    import dataclasses

    from datasets import Dataset
    from transformers import TrainerCallback

    from eureka_kit.data.prompts import prompt_text
    from eureka_kit.data.rewards import make_reward_fn

    cuda = torch.cuda.is_available()
    rec.set("versions", {"trl": trl.__version__, "datasets": datasets.__version__})
    model, tok = build_model(sz, torch.float32)
    P, G, T, steps, micro = sz["rl_prompts"], sz["rl_gens"], sz["rl_tokens"], sz["rl_steps"], sz["rl_micro"]
    problems = problems_for(2000, tok)
    rec.set("problems", _problem_info(tok, problems))
    ds = Dataset.from_list([{"prompt": prompt_text(tok, p, "none"), "answer": str(p["answer"])} for p in problems])
    out_dir = tempfile.mkdtemp(prefix="gpu_bench_trl_")
    wanted = dict(
        output_dir=out_dir, per_device_train_batch_size=micro, gradient_accumulation_steps=(P * G) // micro,
        num_generations=G, max_completion_length=T, num_iterations=1, learning_rate=1e-6, beta=0.0, epsilon=0.2,
        loss_type="dapo", temperature=1.0, top_p=1.0, top_k=0, max_steps=steps, logging_steps=1,
        report_to="none", use_cpu=not cuda, bf16=cuda, save_strategy="no", use_vllm=False, seed=0,
        disable_tqdm=True, dataloader_num_workers=0)
    fields = {f.name for f in dataclasses.fields(GRPOConfig)}
    # gradient checkpointing, as in ours: newer transformers renamed the argument
    wanted["activation_checkpointing" if "activation_checkpointing" in fields else "gradient_checkpointing"] = True
    dropped = sorted(k for k in wanted if k not in fields)
    gcfg = GRPOConfig(**{k: v for k, v in wanted.items() if k in fields})
    rec.set("config", dict({k: v for k, v in wanted.items() if k != "output_dir"}, dropped_unknown=dropped,
                           generation_batch_size=getattr(gcfg, "generation_batch_size", None),
                           steps_per_generation=getattr(gcfg, "steps_per_generation", None),
                           note="per_device_train_batch_size x gradient_accumulation_steps = 256 completions = one "
                                "generation batch and one optimizer step per step, like ours (micro-batch 64)"))
    steps_out: list[dict] = []
    state = {"begin": None, "last_end": None}

    class StepTimer(TrainerCallback):
        def on_step_begin(self, a, s, c, **kw):
            if state["begin"] is None:
                sync()
                state["begin"] = time.perf_counter()

        def on_step_end(self, a, s, c, **kw):
            sync()
            now = time.perf_counter()
            steps_out.append({"step": s.global_step, "wall_s": now - state["last_end"],
                              "begin_to_end_s": now - state["begin"]})
            state["begin"], state["last_end"] = None, now
            rec.set("steps", steps_out)
            log(S, f"step {s.global_step}: wall {steps_out[-1]['wall_s']:.2f}s")

    def build():
        t = GRPOTrainer(model=model, reward_funcs=[make_reward_fn()], args=gcfg, train_dataset=ds,
                        processing_class=tok, callbacks=[StepTimer()])
        return t

    trainer, dt = timed(build)
    rec.set("trainer_init_s", dt)

    def go():
        state["last_end"] = time.perf_counter()
        t0 = state["last_end"]
        trainer.train()
        sync()
        hist = [h for h in trainer.state.log_history if "step_time" in h or "completions/mean_length" in h]
        return {"train_wall_s": time.perf_counter() - t0,
                "log": [{k: h.get(k) for k in ("step", "step_time", "completions/mean_length",
                                               "completions/clipped_ratio", "reward") if k in h} for h in hist]}

    attempt(rec, "train", go, S)
    if steps_out:
        rec.set("step_s_first", steps_out[0]["wall_s"])
        rec.set("step_s_last", steps_out[-1]["wall_s"])


SECTION_FUNCS = {"generation": section_generation, "learner": section_learner, "rl_ours": section_rl_ours,
                 "rl_trl": section_rl_trl}


def child_main(args) -> None:
    name = args.section
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    rec = Recorder(os.path.join(args.out, f"section_{name}.json"))
    rec.set("status", "running")
    t0 = time.perf_counter()
    try:
        rec.set("env", env_info())
        sz = SIZES["smoke" if args.smoke else "full"]
        SECTION_FUNCS[name](rec, sz, args)
        rec.set("status", "ok")
    except Exception as e:  # noqa: BLE001
        rec.set("status", "error")
        rec.set("error", f"{type(e).__name__}: {str(e)[:500]}")
        rec.set("traceback", traceback.format_exc()[-3000:])
        log(name, f"section FAILED: {type(e).__name__}: {e}")
    rec.set("section_wall_s", time.perf_counter() - t0)


# =============================================================================================
# Parent side: run each section in a child with a cap, gather, print the table.

_current_child: subprocess.Popen | None = None


def _kill_child() -> None:
    p = _current_child
    if p is not None and p.poll() is None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(p.pid, sig)  # the child's own process group (it started a new session)
            except ProcessLookupError:
                return
            try:
                p.wait(timeout=5)
                return
            except subprocess.TimeoutExpired:
                continue


_on_killed = None  # set by parent_main: records the interrupted section and writes the JSON


def _on_term(signum, frame):
    _kill_child()
    if _on_killed is not None:
        try:
            _on_killed(signum)
        except Exception as e:  # noqa: BLE001
            print(f"[gpu_bench] could not write results after signal {signum}: {e}", flush=True)
    sys.exit(128 + signum)


def run_section(name: str, args, cap: float) -> dict:
    global _current_child
    path = os.path.join(args.out, f"section_{name}.json")
    if os.path.exists(path):
        os.remove(path)
    cmd = [sys.executable, os.path.abspath(__file__), "--section", name, "--out", args.out, "--cap", str(cap)]
    if args.smoke:
        cmd.append("--smoke")
    t0 = time.perf_counter()
    _current_child = subprocess.Popen(cmd, start_new_session=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    timed_out = False
    try:
        rc = _current_child.wait(timeout=cap)
    except subprocess.TimeoutExpired:
        timed_out = True
        _kill_child()
        rc = _current_child.returncode
    _current_child = None
    wall = time.perf_counter() - t0
    try:
        with open(path) as f:
            res = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        res = {"status": "error", "error": f"no result file: {e}"}
    if timed_out:
        res["status"] = "timeout"
        res["error"] = f"section cap of {cap:.0f} s reached; partial results kept"
    elif rc != 0 and res.get("status") in ("running", None):
        res["status"] = "error"
        res["error"] = f"child exited with code {rc} (crash?)"
    res["wall_s"], res["cap_s"], res["returncode"] = wall, cap, rc
    return res


def _fmt(x, spec=".2f"):
    if x is None:
        return "-"
    if isinstance(x, float):
        return format(x, spec)
    return str(x)


def summarize(results: dict) -> tuple[list[tuple[str, str, str]], dict]:
    """Table rows (section, measurement, value) and the headline numbers."""
    rows, head = [], {}
    g = results.get("generation", {})
    for k in ("static_first_call", "static_second_call", "dynamic_default", "eureka_generate_hf_first_call",
              "eureka_generate_hf"):
        r = g.get(k) or {}
        if "skipped" in r:
            rows.append(("generation", k, "skipped: " + r["skipped"]))
        elif "error" in r:
            rows.append(("generation", k, "FAILED " + r["error"][:60]))
        elif r:
            rows.append(("generation", k, f"{_fmt(r.get('seconds'))} s, {_fmt(r.get('tokens_per_s'), ',.0f')} tok/s"))
    for k, v in (g.get("ratios") or {}).items():
        rows.append(("generation", k, _fmt(v)))
        head[f"gen_{k}"] = v
    lr = results.get("learner", {})
    pk = lr.get("matmul_peak") or {}
    if pk.get("tflops"):
        rows.append(("learner", "matmul_peak", f"{pk['tflops']:.0f} TFLOP/s ({pk.get('dtype')}, n={pk.get('n')})"))
    for k in ("eureka", "naive", "eureka_tf32"):
        r = lr.get(k) or {}
        if "error" in r:
            rows.append(("learner", k, ("OOM " if r.get("oom") else "FAILED ") + r["error"][:60]))
        elif "skipped" in r:
            rows.append(("learner", k, "skipped: " + r["skipped"]))
        elif r:
            rows.append(("learner", k, f"{_fmt(r.get('step_s_median'), '.3f')} s/step, "
                                       f"{_fmt(r.get('tokens_per_s'), ',.0f')} tok/s, MFU 6N {_fmt(r.get('mfu_6N'), '.3f')}"
                                       f", 8N/790T {_fmt(r.get('mfu_8N_nominal'), '.3f')}, peak+{_fmt(r.get('peak_above_base_gb'), '.1f')} GB"))
    for k, v in (lr.get("comparison") or {}).items():
        rows.append(("learner", k, _fmt(v)))
    if (lr.get("eureka") or {}).get("tokens_per_s"):
        head["learner_tokens_per_s"] = lr["eureka"]["tokens_per_s"]
        head["learner_mfu_8N_nominal"] = lr["eureka"]["mfu_8N_nominal"]
        head["learner_mfu_6N_measured_peak"] = lr["eureka"].get("mfu_6N")
    for name in ("rl_ours", "rl_trl"):
        r = results.get(name, {})
        if r.get("skipped"):
            rows.append((name, "skipped", r["skipped"][:100]))
        for s in r.get("steps") or []:
            extra = f", perf/step_s {_fmt(s.get('perf_step_s'))}, len {_fmt(s.get('len_mean'), '.0f')}" if name == "rl_ours" else ""
            rows.append((name, f"step {s.get('step')}", f"{_fmt(s.get('wall_s'))} s{extra}"))
        tr = r.get("train") or {}
        if "error" in tr:
            rows.append((name, "train", ("OOM " if tr.get("oom") else "FAILED ") + tr["error"][:60]))
    ours, theirs = results.get("rl_ours", {}), results.get("rl_trl", {})
    for which in ("first", "last"):
        a, b = theirs.get(f"step_s_{which}"), ours.get(f"step_s_{which}")
        if a and b:
            head[f"rl_step_trl_over_ours_{which}"] = a / b
            rows.append(("rl", f"trl_over_ours ({which} step)", _fmt(a / b)))
    if "rl_step_trl_over_ours_last" in head:
        head["rl_step_trl_over_ours"] = head["rl_step_trl_over_ours_last"]
    for name, r in results.items():
        if r.get("status") != "ok":
            rows.append((name, "status", f"{r.get('status')}: {str(r.get('error', ''))[:80]}"))
    return rows, head


def parent_main(args) -> int:
    signal.signal(signal.SIGTERM, _on_term)
    os.makedirs(args.out, exist_ok=True)
    caps = SMOKE_CAPS if args.smoke else CAPS
    sections = [s for s in args.sections.split(",") if s]
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown:
        raise SystemExit(f"--sections: unknown {unknown}; allowed {SECTIONS}")
    budget = args.budget or sum(caps[s] for s in sections)
    t_start = time.monotonic()
    out = {"meta": {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "argv": sys.argv, "smoke": args.smoke,
                    "sizes": SIZES["smoke" if args.smoke else "full"], "budget_s": budget, "caps_s": caps},
           "sections": {}, "headline": {}}
    path = os.path.join(args.out, "gpu_bench.json")
    try:
        git = lambda *a: subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()  # noqa: E731
        out["meta"]["git"] = {"commit": git("rev-parse", "HEAD"),
                              "dirty_package_files": git("status", "--porcelain", "--", "eureka_kit").splitlines()}
    except (OSError, subprocess.SubprocessError):
        pass

    def write():
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(out, f, indent=2, default=str)
        os.replace(tmp, path)

    def killed(signum):
        name = next((s for s in sections if s not in out["sections"]), None)
        if name is not None:
            try:
                with open(os.path.join(args.out, f"section_{name}.json")) as f:
                    res = json.load(f)
            except (OSError, json.JSONDecodeError):
                res = {}
            res.update(status="killed", error=f"gpu_bench received signal {signum} (outer timeout?); partial results")
            out["sections"][name] = res
        out["meta"]["killed_by_signal"] = signum
        out["headline"] = summarize(out["sections"])[1]
        write()
        print(f"[gpu_bench] killed by signal {signum}; partial results in {path}: {json.dumps(out['headline'])}",
              flush=True)

    global _on_killed
    _on_killed = killed
    carry = 0.0
    for i, name in enumerate(sections):
        remaining = budget - (time.monotonic() - t_start)
        later_min = sum(min(caps[s], 30) for s in sections[i + 1:])  # keep a little for the rest
        cap = max(10.0, min(caps[name] + carry, remaining - later_min))
        log("main", f"section {name}: cap {cap:.0f} s (budget left {remaining:.0f} s)")
        res = run_section(name, args, cap)
        carry = max(0.0, cap - res["wall_s"])
        out["sections"][name] = res
        if "env" in res and "env" not in out["meta"]:
            out["meta"]["env"] = res["env"]
        out["headline"] = summarize(out["sections"])[1]
        write()
        log("main", f"section {name}: {res.get('status')} in {res['wall_s']:.1f} s")
    out["meta"]["total_wall_s"] = time.monotonic() - t_start
    rows, head = summarize(out["sections"])
    out["headline"] = head
    write()

    env = out["meta"].get("env", {})
    print(f"\n== gpu_bench: {env.get('device')} torch {env.get('torch')} transformers {env.get('transformers')}"
          f" ({'smoke' if args.smoke else 'full'} sizes, {out['meta']['total_wall_s']:.0f} s) ==")
    w0 = max([len(r[0]) for r in rows] + [7])
    w1 = max([len(r[1]) for r in rows] + [11])
    print(f"{'section':<{w0}}  {'measurement':<{w1}}  value")
    for a, b, c in rows:
        print(f"{a:<{w0}}  {b:<{w1}}  {c}")
    print(f"results: {path}")
    for k, v in head.items():
        if k != "rl_step_trl_over_ours":
            print(f"{k}={_fmt(v, '.3f')}")
    print(f"rl_step_trl_over_ours={_fmt(head.get('rl_step_trl_over_ours'), '.3f')}", flush=True)
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny sizes (CPU is fine); exercises every code path")
    p.add_argument("--out", default="gpu_bench_out", help="output folder (gpu_bench.json, section_*.json)")
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {SECTIONS}")
    p.add_argument("--budget", type=float, default=None, help="total seconds for all sections (default: sum of caps)")
    p.add_argument("--section", default=None, help=argparse.SUPPRESS)  # internal: run one section (child)
    p.add_argument("--cap", type=float, default=0.0, help=argparse.SUPPRESS)  # internal: the child's cap
    args = p.parse_args()
    args.out = os.path.abspath(args.out)
    os.makedirs(args.out, exist_ok=True)
    if args.section:
        child_main(args)
        return 0
    return parent_main(args)


if __name__ == "__main__":
    sys.exit(main())
