"""The lean CPU sampling loop with and without one of its speedups, side by side in one process.

`--without attention`: transformers' sdpa instead of `rollout.grouped_decode_attention`;
`--without cache`: the growing `DynamicCache` (a `torch.cat` per token and layer) instead of `rollout.reserve_cache`.
Alternating A/B rounds of one toy-world rollout (64 prompts x 8 samples, max 48 new tokens, the RL-lift recipe's
batch) from the toy base policy, timed per round; prints the medians, their ratio, and whether both sampled the
same tokens from the same seed.

    python benchmarks/decode_loop.py --without cache --rounds 8 --threads 2

Results go into benchmarks/RESULTS.md (machine, date, numbers).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch

from eureka_kit import models, rollout
from eureka_kit.config import RunConfig
from eureka_kit.train import load_problems


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--without", choices=["attention", "cache"], default="cache")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = RunConfig.from_preset("cpgd", seed=args.seed, train_per_level=3000, rollout_batch_size=args.prompts,
                                max_len=48)
    policy, processor = models.load(cfg.model, seed=args.seed)
    problems = load_problems(cfg)
    name, disabled = {"attention": ("cpu_decode_attention", lambda policy: contextlib.nullcontext()),
                      "cache": ("reserve_cache", lambda cache, extra: None)}[args.without]
    speedup = getattr(rollout, name)

    def sample(with_speedup: bool, round_: int):
        setattr(rollout, name, speedup if with_speedup else disabled)
        try:
            chunk = problems[round_ * args.prompts:(round_ + 1) * args.prompts]
            t0 = time.perf_counter()
            ro = rollout.generate(policy, processor, chunk, cfg, torch.Generator().manual_seed(round_))
            return time.perf_counter() - t0, ro
        finally:
            setattr(rollout, name, speedup)

    sample(True, 0), sample(False, 0)  # warm-up
    times = {True: [], False: []}
    same = True
    for r in range(args.rounds):
        (t_new, a), (t_old, b) = sample(True, r), sample(False, r)
        times[True].append(t_new), times[False].append(t_old)
        same &= torch.equal(a.completion_ids, b.completion_ids)
        print(f"round {r}: with {t_new:.3f} s  without {t_old:.3f} s  mean length {a.lengths.float().mean():.1f}")
    new, old = statistics.median(times[True]), statistics.median(times[False])
    print(f"\nmedian rollout s: with {name} {new:.3f}  without {old:.3f}  {args.without}_speedup={old / new:.3f}  "
          f"same tokens: {same}  (torch threads {args.threads}, {args.prompts} prompts x {cfg.group_size})")


if __name__ == "__main__":
    main()
