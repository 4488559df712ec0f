"""The lean CPU sampling loop with and without one of its speedups, side by side in one process.

`--without attention`: transformers' sdpa instead of `rollout.cpu_attention_forward`;
`--without cache`: the growing `DynamicCache` (a `torch.cat` per token and layer) instead of `rollout.reserve_cache`;
`--without fast_decode`: the model's own forward per token instead of `fast_decode.Qwen2Decoder.step`.
Alternating A/B rounds of one toy-world rollout (by default 64 prompts x 8 samples, the RL-lift recipe's batch; max
48 new tokens) from the toy base policy, timed per round; prints the medians, their ratio, and whether both sampled
the same tokens from the same seed, for each rollout size in `--prompts`.

    python benchmarks/decode_loop.py --without cache --rounds 8 --threads 2
    python benchmarks/decode_loop.py --without attention --prompts 2,4,8,16,32,64
    python benchmarks/decode_loop.py --without fast_decode --prompts 8,64 --rounds 8

Results go into benchmarks/RESULTS.md (machine, date, numbers).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch

from eureka_kit.config import RunConfig
from eureka_kit.data.problems import load_problems
from eureka_kit.engine import rollout
from eureka_kit.engine.base_policy import load_policy


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--without", choices=["attention", "cache", "fast_decode"], default="cache")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompts", default="64", help="prompts per rollout; a comma list measures each size")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    sizes = [int(n) for n in args.prompts.split(",")]
    cfg = RunConfig.from_preset("cpgd", seed=args.seed, train_per_level=3000, max_len=48)
    policy, processor = load_policy(cfg.model, seed=args.seed)
    problems = load_problems(cfg)
    lean_loop = rollout.sample_with_cache
    name, disabled = {"attention": ("cpu_attention", lambda policy: contextlib.nullcontext()),
                      "cache": ("reserve_cache", lambda cache, extra: None),
                      "fast_decode": ("sample_with_cache",
                                      lambda *a, **k: lean_loop(*a, **{**k, "fast_decode": False}))}[args.without]
    speedup = getattr(rollout, name)

    def sample(with_speedup: bool, round_: int, prompts: int):
        setattr(rollout, name, speedup if with_speedup else disabled)
        try:
            chunk = problems[round_ * prompts:(round_ + 1) * prompts]
            t0 = time.perf_counter()
            ro = rollout.generate(policy, processor, chunk, cfg, torch.Generator().manual_seed(round_))
            return time.perf_counter() - t0, ro
        finally:
            setattr(rollout, name, speedup)

    rows = []
    for prompts in sizes:
        sample(True, 0, prompts), sample(False, 0, prompts)  # warm-up
        times = {True: [], False: []}
        same = True
        for r in range(args.rounds):
            (t_new, a), (t_old, b) = sample(True, r, prompts), sample(False, r, prompts)
            times[True].append(t_new), times[False].append(t_old)
            same &= torch.equal(a.completion_ids, b.completion_ids)
        new, old = statistics.median(times[True]), statistics.median(times[False])
        rows.append((prompts, new, old, same))
        print(f"{prompts} prompts x {cfg.group_size}: median rollout s with {name} {new:.4f}  without {old:.4f}  "
              f"{args.without}_speedup={old / new:.3f}  same tokens: {same}", flush=True)
    print(f"\n| prompts x {cfg.group_size} | with {name} s | without s | {args.without}_speedup | same tokens |")
    print("|---:|---:|---:|---:|---|")
    for prompts, new, old, same in rows:
        print(f"| {prompts} | {new:.4f} | {old:.4f} | {old / new:.3f} | {same} |")
    print(f"(torch threads {args.threads}, {args.rounds} rounds per size)")


if __name__ == "__main__":
    main()
