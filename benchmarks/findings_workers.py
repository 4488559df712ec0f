"""Findings cells: one process with all the cores' torch threads vs one single-threaded process per core.

Runs the same small set of cells (RL arms at dose 1 and 8, two seeds) both ways in one invocation, each into a
fresh folder, and prints the wall times and their ratio. Numbers go into benchmarks/RESULTS.md.

    python benchmarks/findings_workers.py --steps 20
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from eureka_kit.workbench.findings import Profile
from eureka_kit.workbench.findings_run import run_profile


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    args = ap.parse_args()
    prof = Profile("bench", seeds=(0, 1), num_steps=args.steps, doses=(1, 8), eval_per_level=8, ood_per_level=4,
                   curve_points=1, arms=("grpo@1", "cpgd@1", "grpo@8", "cpgd@8"))
    times = {}
    for workers in (1, args.workers):
        with tempfile.TemporaryDirectory() as tmp:
            started = time.perf_counter()
            run_profile(prof, Path(tmp) / "f", work=Path(tmp) / "w", workers=workers, progress=False)
            times[workers] = time.perf_counter() - started
        threads = max(1, (os.cpu_count() or 1) // workers)
        print(f"{workers} worker(s) x {threads} thread(s): {times[workers]:.1f} s for {len(prof.cells())} cells",
              flush=True)
    print(f"findings_workers_speedup={times[1] / times[args.workers]:.2f}  "
          f"(1 process x {os.cpu_count()} threads vs {args.workers} processes x 1 thread)")


if __name__ == "__main__":
    main()
