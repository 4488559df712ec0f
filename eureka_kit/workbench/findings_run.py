"""Running a findings profile: every (arm, seed) cell, in worker processes, cached; then findings.json.

    run_profile("quick", out="reports/findings")   # -> the judged findings (a list of dicts)

    <out>/cells/<arm>/seed<k>.json   one cell's measurements (what `findings.effect_of` reads)
    <out>/findings.json              profile, sizes, instrument checks, judged findings, dose-response, provenance
    <work>/<profile>/<arm>/seed<k>/  the cells' run directories (metrics, rollouts) - outside reports/

A cell is a pure function of (arm, seed, profile sizes, package version), so a cell file whose key matches is
reused and an interrupted run resumes. Cells run in `workers` processes sharing the cores' torch threads: at
this model size a step is mostly dispatch-bound, so two single-threaded processes on two cores beat one
two-threaded process (`benchmarks/findings_workers.py`, numbers in benchmarks/RESULTS.md).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import platform
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from tqdm import tqdm

from eureka_kit.version import __version__
from eureka_kit.workbench.findings import (
    ARMS,
    CONTROL,
    CONTROL_SETTINGS,
    DOSES,
    PROFILES,
    RL_SETTINGS,
    SFT_SETTINGS,
    Profile,
    dose_response,
    instrument_checks,
    judge_findings,
    load_cells,
    profile_dict,
)

# Sampling streams: the base's bucket sample, and every arm's evaluation (the same stream for every arm of a
# seed, so arms are compared on the same problems and the same sampler seed).
BUCKET_STREAM, EVAL_STREAM = 10_000, 20_000


def cell_key(arm: str, seed: int, profile: Profile) -> str:
    """What a cell's measurements depend on (the control's recipe only enters the control's key)."""
    spec_arm = {k: v for k, v in asdict(ARMS[arm]).items() if k != "recipe" or v}
    control = arm == CONTROL
    sizes = {k: v for k, v in asdict(profile).items()
             if k not in ("name", "seeds", "doses", "arms") and (k != "control_steps" or control)}
    spec = dict(arm=spec_arm, seed=seed, sizes=sizes, rl=RL_SETTINGS, sft=SFT_SETTINGS,
                dose=DOSES.get(ARMS[arm].dose), version=__version__, **({"control": CONTROL_SETTINGS} if control else {}))
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def eval_problems(seed: int, profile: Profile) -> tuple[list[dict], list[dict]]:
    """(math test problems, OOD test problems) of one seed: every level, the same for every arm."""
    from eureka_kit.data import toyworld

    math_problems = toyworld.generate("test", "math", profile.eval_per_level, seed=seed)
    ood = [p for s in toyworld.OOD_SUBJECTS for p in toyworld.generate("test", s, profile.ood_per_level, seed=seed)]
    return math_problems, ood


def _sample(policy, tok, problems, cfg, samples: int, stream: int) -> list[int]:
    from eureka_kit.engine.evaluate import sample_problems

    return sample_problems(policy, tok, problems, cfg, num_samples=samples, seed=stream)["successes"].tolist()


def _accuracy(successes: list[int], samples: int) -> float:
    return sum(successes) / (samples * len(successes))


def measure(policy, tok, cfg, seed: int, profile: Profile, *, ood: bool = True) -> dict[str, Any]:
    """Sampled test accuracy of `policy` on seed `seed`'s math problems (and OOD ones unless `ood` is False)."""
    math_problems, ood_problems = eval_problems(seed, profile)
    per_problem = _sample(policy, tok, math_problems, cfg, profile.eval_samples, EVAL_STREAM + seed)
    out = dict(per_problem_successes=per_problem, eval_samples=profile.eval_samples,
               math_accuracy=_accuracy(per_problem, profile.eval_samples), levels=[p["level"] for p in math_problems])
    if ood:
        out["ood_accuracy"] = _accuracy(_sample(policy, tok, ood_problems, cfg, profile.eval_samples,
                                                EVAL_STREAM + seed), profile.eval_samples)
    return out


def _base_cell(policy, tok, seed: int, profile: Profile) -> dict[str, Any]:
    from eureka_kit.config import RunConfig
    from eureka_kit.data import toyworld

    cfg = RunConfig.from_preset("grpo", seed=seed, **RL_SETTINGS)
    out = measure(policy, tok, cfg, seed, profile)
    math_problems, _ = eval_problems(seed, profile)
    k = profile.bucket_samples
    bucket = _sample(policy, tok, math_problems, cfg, k, BUCKET_STREAM + seed)
    untaught = len(toyworld.LEVELS) - 1
    out.update(bucket_successes=bucket, bucket_samples=k,
               buckets=["untaught" if p["level"] == untaught else "never" if b == 0 else "always" if b == k
                        else "sometimes" for p, b in zip(math_problems, bucket, strict=True)])
    out["math_auc"] = out["math_accuracy"]
    return out


def _rl_cell(policy, tok, arm: str, seed: int, profile: Profile, run_dir: Path) -> dict[str, Any]:
    from eureka_kit.config import RunConfig
    from eureka_kit.engine.checkpoints import load_weights
    from eureka_kit.engine.loop import train

    spec = ARMS[arm]
    if spec.recipe == "control":
        steps, settings = profile.control_steps, dict(CONTROL_SETTINGS)
    else:
        minibatches, epochs = DOSES[spec.dose]
        batch = RL_SETTINGS["rollout_batch_size"] * RL_SETTINGS["group_size"]
        steps, settings = profile.num_steps, dict(RL_SETTINGS, train_batch_size=batch // minibatches,
                                                  micro_batch_size=batch // minibatches, update_epochs=epochs)
    cfg = RunConfig.from_preset(spec.preset, seed=seed, run_dir=str(run_dir), num_steps=steps,
                                save_every=max(1, steps // profile.curve_points), **settings)
    started = time.perf_counter()
    run = train(cfg, policy=copy.deepcopy(policy), processor=tok, progress=False)
    train_s = time.perf_counter() - started
    out = measure(run.policy, tok, cfg, seed, profile)
    # Area under the test-accuracy curve: the base (step 0, measured the same way), every checkpoint, the end.
    curve = [(0, measure(policy, tok, cfg, seed, profile, ood=False)["math_accuracy"])]
    probe = copy.deepcopy(policy)
    for ckpt in run.dir.checkpoints():
        step = int(ckpt.name.split("_")[1]) + 1
        if step < steps:  # the last checkpoint is the trained policy, measured above
            load_weights(probe, ckpt)
            curve.append((step, measure(probe, tok, cfg, seed, profile, ood=False)["math_accuracy"]))
    curve.append((steps, out["math_accuracy"]))
    _drop_checkpoints(run.dir)
    hist = run.dir.metrics()
    out.update(curve=curve, math_auc=sum(a for _, a in curve) / len(curve), train_s=train_s,
               ratio_tail_share=float(hist["policy/ratio_tail_frac"].mean()),
               ratio_max_median=float(hist["policy/ratio_max"].median()),
               train_accuracy=float(hist["reward/accuracy"].mean()), steps=len(hist), run_dir=str(run_dir))
    return out


def _drop_checkpoints(run_dir) -> None:
    """Weights are not needed once a cell is measured; the metrics and rollouts stay for the pages."""
    for ckpt in run_dir.checkpoints():
        for f in ckpt.iterdir():
            f.unlink()
        ckpt.rmdir()


def _sft_cell(policy, tok, seed: int, profile: Profile, run_dir: Path) -> dict[str, Any]:
    from eureka_kit.config import RunConfig
    from eureka_kit.engine.sft import sft

    cfg = RunConfig.from_preset("sft", seed=seed, run_dir=str(run_dir), **SFT_SETTINGS)
    started = time.perf_counter()
    run = sft(cfg, policy=copy.deepcopy(policy), processor=tok, progress=False)
    out = measure(run.policy, tok, cfg, seed, profile)
    _drop_checkpoints(run.dir)
    out.update(train_s=time.perf_counter() - started, run_dir=str(run_dir))
    out["math_auc"] = out["math_accuracy"]
    return out


def run_cell(arm: str, seed: int, profile: Profile, out: str, work: str, threads: int = 1) -> dict[str, Any]:
    """Measure one (arm, seed) cell with `threads` torch threads and write `<out>/cells/<arm>/seed<seed>.json`;
    returns the cell."""
    import torch

    from eureka_kit.engine.base_policy import load_policy

    torch.set_num_threads(threads)
    policy, tok = load_policy("toy", seed=0)  # one base for every seed: the seeds vary data, sampling, training
    run_dir = Path(work) / profile.name / arm / f"seed{seed}"
    started = time.perf_counter()
    kind = ARMS[arm].kind
    cell = (_base_cell(policy, tok, seed, profile) if kind == "base" else
            _sft_cell(policy, tok, seed, profile, run_dir) if kind == "sft" else
            _rl_cell(policy, tok, arm, seed, profile, run_dir))
    cell.update(arm=arm, seed=seed, key=cell_key(arm, seed, profile), wall_s=time.perf_counter() - started,
                commit=_git_commit(), threads=threads)
    path = Path(out) / "cells" / arm / f"seed{seed}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.with_suffix(".tmp").write_text(json.dumps(cell))
    os.replace(path.with_suffix(".tmp"), path)
    return cell


def read_cells(out: str | Path, profile: Profile) -> dict[tuple[str, int], dict]:
    """The cells of `profile` already on disk under `out` whose key matches (stale ones are ignored)."""
    cells = {}
    for arm, seed in profile.cells():
        path = Path(out) / "cells" / arm / f"seed{seed}.json"
        if path.exists():
            cell = json.loads(path.read_text())
            if cell.get("key") == cell_key(arm, seed, profile):
                cells[(arm, seed)] = cell
    return cells


def run_profile(profile: str | Profile = "quick", out: str | Path = "reports/findings", *, work: str | Path = "runs/findings",
                workers: int = 2, progress: bool = True) -> dict[str, Any]:
    """Run every missing cell of `profile` (a PROFILES name or a Profile) and write `<out>/findings.json`.
    Returns what it wrote."""
    from eureka_kit.engine.base_policy import build_base_policy

    prof = PROFILES[profile] if isinstance(profile, str) else profile
    out, work = Path(out), Path(work)
    started = time.perf_counter()
    build_base_policy(seed=0)  # built once here, not raced by the workers
    cells = read_cells(out, prof)
    todo = [c for c in prof.cells() if c not in cells]
    run_cells(run_cell, todo, (prof, str(out), str(work)), cells, workers=workers, desc=f"findings ({prof.name})",
              progress=progress)
    result = summarize(cells, prof)
    result["profile"]["work"] = str(work)
    result["provenance"].update(elapsed_s=time.perf_counter() - started, cells_run=len(todo), workers=workers)
    out.mkdir(parents=True, exist_ok=True)
    (out / "findings.json").write_text(json.dumps(result, indent=1, default=float))
    return result


def run_cells(fn, todo: list[tuple], args: tuple, cells: dict[tuple, dict], *, workers: int, desc: str,
              progress: bool = True) -> None:
    """Run `fn(*cell, *args, threads)` for every cell of `todo` into `cells` (keyed by the cell tuple), in `workers`
    spawned processes sharing the cores' torch threads (in this process when `workers` is 1), with a progress bar
    that counts the cells already in `cells` as done. Used by the findings and the labs."""
    threads = max(1, (os.cpu_count() or 1) // max(1, workers))
    bar = tqdm(total=len(cells) + len(todo), initial=len(cells), desc=desc, disable=not progress, ncols=100)
    if todo and workers > 1:
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
            futures = {pool.submit(fn, *cell, *args, threads): cell for cell in todo}
            for fut in as_completed(futures):
                cells[futures[fut]] = fut.result()
                bar.set_postfix_str(" ".join(map(str, futures[fut])))
                bar.update()
    else:
        for cell in todo:
            cells[cell] = fn(*cell, *args, threads)
            bar.update()
    bar.close()


def summarize(cells: dict[tuple[str, int], dict], prof: Profile) -> dict[str, Any]:
    """findings.json's content from a profile's cells."""
    return dict(
        profile=profile_dict(prof),
        instrument=instrument_checks(cells),
        findings=judge_findings(cells, prof.name, prof.seeds),
        dose_response={key: dose_response(cells, key) for key in ("ratio_tail_share", "math_accuracy", "math_auc")},
        arms={arm: {"seeds": sorted(s for a, s in cells if a == arm),
                    **{k: [cells[(arm, s)].get(k) for s in prof.seeds if (arm, s) in cells]
                       for k in ("math_accuracy", "ood_accuracy", "math_auc", "ratio_tail_share", "ratio_max_median",
                                 "train_s")}}
              for arm in dict.fromkeys(a for a, _ in prof.cells())},
        provenance=dict(version=__version__, commit=_git_commit(), machine=_machine(),
                        command=f"eureka-kit report --profile {prof.name}",
                        cells_wall_s=round(sum(cell.get("wall_s", 0.0) for cell in cells.values()), 1),
                        cell_commits={c: sum(cell.get("commit", "not recorded") == c for cell in cells.values())
                                      for c in sorted({cell.get("commit", "not recorded") for cell in cells.values()})}),
    )


def _git_commit() -> str | None:
    from eureka_kit.engine.runs import _git_commit as commit

    return commit()


def _machine() -> str:
    import torch

    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
            f"CPU capability {torch.backends.cpu.get_cpu_capability()}")


def load_or_run(findings_dir: str | Path = "", *, profile: str = "quick", out: str | Path = "runs/findings_notebooks",
                workers: int = 2, progress: bool = True) -> tuple[dict[str, Any], dict[tuple[str, int], dict], Path]:
    """(findings.json content, cells, folder) of a finished findings run in `findings_dir` (what the report suite
    passes to its notebooks), or, when `findings_dir` is empty, of `profile` run (or resumed) into `out`."""
    folder = Path(findings_dir) if findings_dir else Path(out)
    if not findings_dir:
        run_profile(profile, folder, work=folder / "runs", workers=workers, progress=progress)
    path = folder / "findings.json"
    if not path.exists():
        raise FileNotFoundError(f"{path}: not a findings run (run `eureka-kit report` or pass findings_dir='')")
    return json.loads(path.read_text()), load_cells(folder), folder
