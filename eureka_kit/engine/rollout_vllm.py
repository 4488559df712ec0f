"""The `vllm` rollout backend: an offline vLLM engine in the learner's process, fed the learner's weights.

`generate_vllm(policy, processor, problems, cfg, generator)` returns the same `Rollouts` record as
`rollout.generate_hf`. The engine is built lazily, once per policy object, from the policy's own weights
(saved to a temporary folder only for vLLM to read config and weights once); after every update `train()`
calls `sync_weights(policy)`, which reloads the learner's tensors into the engine in place (vLLM's
`reload_weights` worker call, no disk). Prompts go in as token ids and completions are decoded with our
processor, so vLLM never loads a tokenizer (the toy char tokenizer is not one AutoTokenizer rebuilds).

In-process ("colocated", as TRL's colocate mode): EngineCore runs in this process, so weights are passed
by reference and no spawned process needs an `if __name__ == "__main__"` guard. Side effects of vLLM's
CPU worker, kept in mind: it pins the OpenMP threads and replaces `torch.set_num_threads` with a no-op.
Sleep mode (free the engine's memory while the learner trains) exists only on GPU platforms; on CPU vLLM
refuses `enable_sleep_mode`, so `sleep`/`wake_up` are skipped there.
"""

from __future__ import annotations

import os
import random
import tempfile
import weakref
from contextlib import contextmanager

import numpy as np
import torch

from eureka_kit.engine import batch
from eureka_kit.models import tokenizer_of

# Colocated on a GPU: the learner needs the rest (TRL's colocate default is 0.3).
GPU_MEMORY_FRACTION = 0.3
# KV cache on CPU; the toy world needs a few MB. VLLM_CPU_KVCACHE_SPACE (GiB) overrides it.
CPU_KV_CACHE_BYTES = 1 << 30
MAX_NUM_SEQS = 256


class Engine:
    """One vLLM `LLM` built from `policy`'s weights; `generate` returns `Rollouts`."""

    def __init__(self, policy, processor, cfg):
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # EngineCore in this process (colocated)
        try:
            from vllm import LLM
            from vllm.platforms import current_platform
        except ImportError as e:
            raise ImportError("rollout_backend='vllm' needs vLLM: `pip install vllm` on GPU, or vLLM's CPU build "
                              "in its own venv (`make test-vllm` makes one)") from e

        on_gpu = current_platform.is_cuda_alike()
        # A weak reference, not id(): a new model may reuse a freed model's id and would inherit its engine.
        self.processor, self.policy = processor, weakref.ref(policy)
        self.is_vision_language = hasattr(policy.config, "vision_config")
        self.max_model_len = max_model_len(policy, cfg)
        self.can_sleep = current_platform.is_sleep_mode_available()
        dtype = "bfloat16" if cfg.bf16 and on_gpu else "float32"
        memory = dict(gpu_memory_utilization=GPU_MEMORY_FRACTION) if on_gpu else dict(kv_cache_memory_bytes=CPU_KV_CACHE_BYTES)
        with tempfile.TemporaryDirectory() as folder, untouched_global_rngs():
            policy.save_pretrained(folder)
            processor.save_pretrained(folder)  # only the image processor config is read (multimodal models)
            self.llm = LLM(
                model=folder, dtype=dtype, max_model_len=self.max_model_len, max_num_seqs=MAX_NUM_SEQS,
                skip_tokenizer_init=True, seed=cfg.seed, enable_sleep_mode=self.can_sleep,
                # Log-probs after temperature / top-p, as the learner computes old_logp at the sampling temperature.
                logprobs_mode="processed_logprobs",
                # On CPU, a chunked prefill makes vLLM 0.32 rewind the request's seeded generator, which a CPU
                # generator cannot do (RuntimeError "CPU Generator does not use offset"): prefill prompts whole.
                enable_chunked_prefill=on_gpu, enforce_eager=not on_gpu, **memory,
            )
        self.asleep = False

    def load_weights(self, policy) -> None:
        """Copy the learner's current weights into the engine (in place; vLLM maps HF names and fuses q/k/v)."""
        self.wake_up()
        weights = [(name, tensor.detach()) for name, tensor in policy.state_dict().items()]
        self.llm.collective_rpc("reload_weights", kwargs=dict(weights_iterator=weights))
        # The prefix cache holds prompt KV computed with the old weights; reusing it would mix two policies.
        self.llm.reset_prefix_cache()

    def sleep(self) -> None:
        """Free the engine's weights and KV cache while the learner trains (GPU only, see module docstring)."""
        if self.can_sleep and not self.asleep:
            self.llm.sleep(level=1)
            self.asleep = True

    def wake_up(self) -> None:
        if self.can_sleep and self.asleep:
            self.llm.wake_up()
            self.asleep = False

    def generate(self, problems: list[dict], cfg, generator: torch.Generator | None, num_samples: int | None,
                 greedy: bool) -> batch.Rollouts:
        from vllm import SamplingParams

        tok = tokenizer_of(self.processor)
        ids, attn, mm = batch.encode_prompts(self.processor, problems, cfg.prompt_template, cfg.multimodal,
                                               cfg.max_prompt_len)
        K = num_samples or cfg.group_size
        prompts = []
        for i, (row, keep) in enumerate(zip(ids, attn, strict=True)):
            prompt = {"prompt_token_ids": row[keep.bool()].tolist()}  # vLLM takes unpadded prompts
            if cfg.multimodal:
                prompt["multi_modal_data"] = {"image": problems[i]["image"]}
            prompts.append(prompt)
        # Like generate_hf: sampling is seeded from our generator (the global torch RNG when None).
        base_seed = int(torch.randint(0, 2**30, (1,), generator=generator))
        # As in generate_hf: a sampled image placeholder would desynchronise the learner's image features.
        banned = batch.placeholder_token_ids(tok) if self.is_vision_language else []
        common = dict(max_tokens=cfg.max_len, logprobs=0, stop_token_ids=[tok.eos_token_id], detokenize=False,
                      logit_bias={t: float("-inf") for t in banned} or None)
        if greedy:  # vLLM allows n=1 only for greedy decoding: repeat the prompt instead
            prompts = [p for p in prompts for _ in range(K)]
            params = SamplingParams(n=1, temperature=0.0, **common)
        else:
            # vLLM seeds sample j of a request with seed + j: space the requests' seeds K apart.
            params = [SamplingParams(n=K, temperature=cfg.temperature, top_p=cfg.top_p, seed=base_seed + i * K, **common)
                      for i in range(len(prompts))]
        self.wake_up()
        with untouched_global_rngs():
            outputs = self.llm.generate(prompts, params, use_tqdm=False)
        self.sleep()
        samples = [c for out in outputs for c in sorted(out.outputs, key=lambda c: c.index)]  # row i -> problem i // K
        return to_rollouts(samples, ids.repeat_interleave(K, dim=0), attn.repeat_interleave(K, dim=0),
                           None if mm is None else [m for m in mm for _ in range(K)], problems, K, tok)


def to_rollouts(samples, prompt_ids, prompt_mask, mm_rows, problems: list[dict], K: int, tok) -> batch.Rollouts:
    """vLLM `CompletionOutput`s (B of them, contiguous groups of K) -> `Rollouts`, right-padded to the longest.

    A stop token ends a completion and stays in it (and in its mask), as in generate_hf.
    """
    T = max(1, max(len(s.token_ids) for s in samples))
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    completion = torch.full((len(samples), T), pad_id, dtype=torch.long)
    logp = torch.zeros((len(samples), T), dtype=torch.float32)
    mask = torch.zeros((len(samples), T), dtype=torch.long)
    for i, s in enumerate(samples):
        n = len(s.token_ids)
        completion[i, :n] = torch.tensor(s.token_ids, dtype=torch.long)
        logp[i, :n] = torch.tensor([step[t].logprob for step, t in zip(s.logprobs, s.token_ids, strict=True)])
        mask[i, :n] = 1
    texts = [tok.decode(row[(m == 1) & (row != tok.eos_token_id)].tolist(), skip_special_tokens=False)
             for row, m in zip(completion, mask, strict=True)]
    return batch.Rollouts(
        prompt_ids=prompt_ids, prompt_mask=prompt_mask, completion_ids=completion, completion_mask=mask,
        behavior_logp=logp, texts=texts, finish_reasons=["stop" if s.finish_reason == "stop" else "length" for s in samples],
        problem_index=torch.arange(len(problems)).repeat_interleave(K), problems=list(problems), mm_inputs=mm_rows,
        extras={"pad_id": tok.pad_token_id, "has_behavior_logp": True},
    )


@contextmanager
def untouched_global_rngs():
    """Restore Python's, NumPy's and torch's global RNG states on exit: vLLM reseeds them when it starts and
    its sampler draws from torch's, and the learner's streams (shuffles, resume) must not notice."""
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng():
            yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)


def max_model_len(policy, cfg) -> int:
    """Prompt + completion budget, within the model's context."""
    text_config = getattr(policy.config, "text_config", policy.config)
    return min(cfg.max_prompt_len + cfg.max_len, text_config.max_position_embeddings)


_engine: Engine | None = None  # one engine per process: it holds the KV cache (and on GPU, its memory share)


def engine_for(policy, processor, cfg) -> Engine:
    """The process's engine for `policy`, built on first use; a different policy or context length replaces it."""
    global _engine
    if _engine is not None and (_engine.policy() is not policy or _engine.max_model_len != max_model_len(policy, cfg)):
        shutdown()
    if _engine is None:
        _engine = Engine(policy, processor, cfg)
    return _engine


@torch.no_grad()
def generate_vllm(policy, processor, problems: list[dict], cfg, generator: torch.Generator | None = None,
                  *, num_samples: int | None = None, greedy: bool = False) -> batch.Rollouts:
    """Sample `num_samples` (default `cfg.group_size`) completions per problem with the colocated engine.

    Same contract as `rollout.generate_hf`; behavior_logp are vLLM's log-probs after temperature and top-p
    (temperature-1 log-probs when `greedy`). The engine holds the weights of its last `sync_weights`.
    """
    return engine_for(policy, processor, cfg).generate(problems, cfg, generator, num_samples, greedy)


@torch.no_grad()
def sync_weights(policy) -> None:
    """Push `policy`'s weights into its engine (train() calls this after its optimizer steps); no engine, no-op."""
    if _engine is not None and _engine.policy() is policy:
        _engine.load_weights(policy)


def shutdown() -> None:
    """Drop the engine and vLLM's process-wide distributed state, so that another engine can be built."""
    global _engine
    if _engine is None:
        return
    import gc

    from vllm.distributed.parallel_state import destroy_distributed_environment, destroy_model_parallel

    _engine.llm.llm_engine.engine_core.shutdown()
    _engine = None
    destroy_model_parallel()
    destroy_distributed_environment()
    gc.collect()
