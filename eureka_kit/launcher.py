"""`launch(cfg, gpus=N)`: start a data-parallel `train(cfg)` in N processes from a notebook, and follow it.

Training runs in a subprocess, `python -m torch.distributed.run --standalone --nproc_per_node N -m
eureka_kit.cli train --config <file>` (torchrun), so the kernel stays free and the processes can use the
GPUs; `eureka_kit.engine.distributed` does the rest inside `train`. On CUDA each process takes one GPU (nccl);
without CUDA the N processes run on the CPU and talk over gloo. Single-process runs should call
`train(cfg)` in the kernel instead.

The launcher's own files (the config it passed, the processes' output) sit next to the run directory in
`<run_dir>.launch/`, because rank 0 (re)creates the run directory when training starts.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from eureka_kit.config import RunConfig
from eureka_kit.engine.runs import Run


@dataclass
class Launch:
    """Handle of a launched run: `poll()`, `wait()` (follows metrics.jsonl, returns the `Run`), `kill()`."""

    cfg: RunConfig
    path: Path
    process: subprocess.Popen
    log_path: Path
    nproc: int

    def poll(self) -> int | None:
        """The exit code, or None while it runs."""
        return self.process.poll()

    def kill(self) -> None:
        """Stop torchrun and its workers (they share the process group started for them)."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait()

    def history(self) -> list[dict]:
        """The metric rows written so far (a line still being written is left for the next call)."""
        path = self.path / "metrics.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().split("\n")[:-1] if line.strip()]

    def wait(self, timeout: float | None = None, progress: bool = True, poll_s: float = 1.0) -> Run:
        """Follow the run with a progress bar until it ends; return its `Run` (history from metrics.jsonl;
        load the trained policy with `models.load(run.dir.checkpoints()[-1])`).

        Raises RuntimeError with the end of the processes' output if they failed, TimeoutError after
        `timeout` seconds (the run keeps going: call `wait` again or `kill`).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        bar = tqdm(total=self.cfg.num_steps, desc=f"{self.cfg.preset} x{self.nproc}", disable=not progress,
                   ncols=120)
        try:
            while True:
                done = self.process.poll() is not None
                history = self.history()
                bar.update(len(history) - bar.n)
                if history:
                    last = history[-1]
                    bar.set_postfix(reward=f"{last.get('reward/mean', float('nan')):.2f}",
                                    acc=f"{last.get('reward/accuracy', float('nan')):.2f}")
                if done:
                    break
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(f"launch: {self.path} still running after {timeout} s (output: {self.log_path})")
                time.sleep(poll_s)
        finally:
            bar.close()
        if self.process.returncode != 0:
            tail = "\n".join(self.log_path.read_text().splitlines()[-40:])
            raise RuntimeError(f"launch: training exited with {self.process.returncode}; "
                               f"end of {self.log_path}:\n{tail}")
        return Run(cfg=self.cfg, path=self.path, history=history)


def launch(cfg: RunConfig, gpus: int = 1, nproc: int | None = None) -> Launch:
    """Start `train(cfg)` in `nproc` processes (default: `gpus`) under torchrun and return at once.

    Batch sizes in `cfg` are global (split over the processes; see `eureka_kit.engine.distributed`). Example:
        run = launch(RunConfig.from_preset("cpgd", num_steps=100), gpus=8).wait()
    """
    nproc = nproc or gpus
    if torch.cuda.is_available() and nproc > torch.cuda.device_count():
        raise ValueError(f"launch: {nproc} processes but {torch.cuda.device_count()} GPUs (one process per GPU)")
    path = cfg.run_path()
    if not cfg.resume:
        shutil.rmtree(path, ignore_errors=True)  # never follow an earlier run's metrics
    files = Path(f"{path}.launch")
    files.mkdir(parents=True, exist_ok=True)
    (files / "config.json").write_text(cfg.to_json())
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "eureka_kit.cli", "train", "--config", str(files / "config.json")]
    with (files / "output.log").open("w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    return Launch(cfg=cfg, path=path, process=process, log_path=files / "output.log", nproc=nproc)
