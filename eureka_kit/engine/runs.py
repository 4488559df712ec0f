"""The run directory: the contract between training, analysis and reports (docs/design.md).

    <run>/config.json             resolved RunConfig + versions + git commit + seed
    <run>/metrics.jsonl           one JSON line per RL step
    <run>/warnings.jsonl          one JSON line per collapse-sentinel warning (diagnostics.step_warnings): step,
                                  kind, value, message, and the offending samples (rows of that step's rollouts)
    <run>/rollouts/step_XXXXXX.parquet   one row per response, per-token arrays as list columns
    <run>/problems.parquet        per-problem attempts and successes per step (long format)
    <run>/checkpoints/step_XXXXXX/ model.safetensors (+ config), trainer.pt (optimizer, RNG and cursor
                                  state), state.json; written to a temporary folder and renamed, so a crash
                                  never leaves a half checkpoint
    <run>/captures/step_XXXXXX/   a step where a collapse sentinel fired: its whole batch and the weights at the
                                  start and end of the step (engine/capture.py; at most `max_captures`)

Everything is plain JSON/parquet so analysts can open it with pandas or polars.
"""

from __future__ import annotations

import errno
import json
import os
import platform
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from eureka_kit.config import RunConfig


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for name in ("eureka_kit", "torch", "transformers", "tokenizers", "math-verify"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return out


def _git_commit() -> str | None:
    try:
        here = Path(__file__).resolve().parent
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                              timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


@dataclass
class RunDir:
    """Writer/reader of one run directory."""

    path: Path
    _problem_rows: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.path = Path(self.path)

    # --- writing ---------------------------------------------------------------------------
    def create(self, config: dict[str, Any], *, overwrite: bool = True) -> RunDir:
        if overwrite and self.path.exists():
            shutil.rmtree(self.path)
        (self.path / "rollouts").mkdir(parents=True, exist_ok=True)
        (self.path / "checkpoints").mkdir(exist_ok=True)
        meta = {"config": config, "versions": _versions(), "git_commit": _git_commit(), "seed": config.get("seed")}
        _atomic_write_text(self.path / "config.json", json.dumps(meta, indent=2, sort_keys=True, default=str))
        return self

    def log_metrics(self, metrics: dict[str, Any]) -> None:
        with (self.path / "metrics.jsonl").open("a") as f:
            f.write(json.dumps(metrics, default=float) + "\n")

    def log_warnings(self, warnings: list[dict[str, Any]]) -> None:
        if warnings:
            with (self.path / "warnings.jsonl").open("a") as f:
                f.writelines(json.dumps(w, default=float) + "\n" for w in warnings)

    def write_rollouts(self, step: int, rows: list[dict[str, Any]]) -> Path:
        """One parquet file per step; a column per key of any row (missing: null), read back as pandas would
        have written it (pyarrow directly: half the time of `DataFrame.to_parquet` for a toy step's rows)."""
        path = self.path / "rollouts" / f"step_{step:06d}.parquet"
        tmp = path.with_suffix(".tmp")
        columns = dict.fromkeys(key for row in rows for key in row)
        pq.write_table(pa.table({key: [row.get(key) for row in rows] for key in columns}), tmp)
        os.replace(tmp, path)
        return path

    def add_problem_attempts(self, step: int, problem_ids: list[str], subjects: list[str], correct: list[float]) -> None:
        """Accumulate per-problem attempts/successes of one step; `flush_problems` writes the table."""
        per_problem: dict[str, dict[str, Any]] = {}
        for pid, subject, c in zip(problem_ids, subjects, correct, strict=True):
            row = per_problem.setdefault(pid, {"step": step, "problem_id": pid, "subject": subject,
                                               "attempts": 0, "successes": 0})
            row["attempts"] += 1
            row["successes"] += int(c > 0)
        self._problem_rows.extend(per_problem.values())

    def flush_problems(self) -> None:
        if self._problem_rows:
            tmp = self.path / "problems.parquet.tmp"
            pd.DataFrame(self._problem_rows).to_parquet(tmp, index=False)
            os.replace(tmp, self.path / "problems.parquet")

    def save_checkpoint(self, step: int, model, optimizer=None, state: dict[str, Any] | None = None,
                        processor=None) -> Path:
        """Model weights (safetensors via save_pretrained), tokenizer/processor, optimizer state, RNG/cursor
        state; atomic. The folder loads with `models.load(path)`."""
        import torch

        final = self.path / "checkpoints" / f"step_{step:06d}"
        tmp = final.with_name(final.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            model.save_pretrained(tmp, safe_serialization=True)
            if processor is not None:
                processor.save_pretrained(tmp)
            trainer = {"step": step, **(state or {})}
            if optimizer is not None:
                trainer["optimizer"] = optimizer.state_dict()
            torch.save(trainer, tmp / "trainer.pt")  # tensors and plain containers only: weights_only=True loads it
            _atomic_write_text(tmp / "state.json", json.dumps({"step": step}))
        except Exception as exc:  # disk full, read-only, file-size limit: say where, keep the earlier checkpoints
            shutil.rmtree(tmp, ignore_errors=True)
            raise OSError(getattr(exc, "errno", None) or errno.EIO,
                          f"checkpoint {final}: write failed ({type(exc).__name__}: {exc}); "
                          f"earlier checkpoints in {final.parent} are untouched") from exc
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        return final

    def truncate_after(self, step: int) -> None:
        """Forget everything logged after `step` (resume from its checkpoint): metrics, warnings, rollouts, problems."""
        for log in (self.path / "metrics.jsonl", self.path / "warnings.jsonl"):
            if log.exists():
                kept = [line for line in log.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
                _atomic_write_text(log, "".join(line + "\n" for line in kept))
        for later in (s for s in self.rollout_steps() if s > step):
            (self.path / "rollouts" / f"step_{later:06d}.parquet").unlink()
        problems = self.problems()
        self._problem_rows = problems[problems.step <= step].to_dict("records") if len(problems) else []
        self.flush_problems()
        for ckpt in self.checkpoints() + self.captures():
            if int(ckpt.name.split("_")[1]) > step:
                shutil.rmtree(ckpt)

    # --- reading ---------------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        return json.loads((self.path / "config.json").read_text())

    def metrics(self) -> pd.DataFrame:
        path = self.path / "metrics.jsonl"
        if not path.exists():
            return pd.DataFrame()
        return pd.DataFrame([json.loads(line) for line in path.read_text().splitlines() if line.strip()])

    def warnings(self) -> pd.DataFrame:
        """One row per sentinel warning: step, since_step, kind, value, message, samples (a list of dicts)."""
        path = self.path / "warnings.jsonl"
        if not path.exists():
            return pd.DataFrame(columns=["step", "since_step", "kind", "value", "message", "samples"])
        return pd.DataFrame([json.loads(line) for line in path.read_text().splitlines() if line.strip()])

    def rollout_steps(self) -> list[int]:
        return sorted(int(p.stem.split("_")[1]) for p in (self.path / "rollouts").glob("step_*.parquet"))

    def rollouts(self, step: int) -> pd.DataFrame:
        return pd.read_parquet(self.path / "rollouts" / f"step_{step:06d}.parquet")

    def problems(self) -> pd.DataFrame:
        path = self.path / "problems.parquet"
        return pd.read_parquet(path) if path.exists() else pd.DataFrame()

    def checkpoints(self) -> list[Path]:
        return sorted(p for p in (self.path / "checkpoints").glob("step_*") if not p.name.endswith(".tmp"))

    def captures(self) -> list[Path]:
        """The pre-collapse capture folders (engine/capture.py `load_capture` reads one), by step."""
        return sorted(p for p in (self.path / "captures").glob("step_*") if not p.name.endswith(".tmp"))


@dataclass
class Run:
    """What `train` returns: the config, the run directory, the metric history and the trained policy."""

    cfg: RunConfig
    path: Path
    history: list[dict[str, Any]] = field(default_factory=list)
    policy: Any = None
    processor: Any = None

    @property
    def dir(self) -> RunDir:
        return RunDir(self.path)



def open_run(path: str | os.PathLike) -> RunDir:
    path = Path(path)
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"run directory: {path} has no config.json (not a eureka_kit run)")
    return RunDir(path)


def open(path: str | os.PathLike) -> RunDir:  # noqa: A001 - `eureka_kit.runs.open(path)` reads naturally
    """The run directory at `path` for analysts: `.metrics()`, `.warnings()`, `.rollouts(step)`, `.problems()` are
    DataFrames."""
    return open_run(path)
