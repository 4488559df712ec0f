"""Sweeps: execute a notebook once per grid point with papermill, locally or as Ray tasks; idempotent.

    eureka-kit sweep notebooks/10_kl_removal.ipynb --grid arms=grpo,cpgd seeds=0,1 --max-parallel 2

Each grid point gets `reports/<notebook>/<run-key>/` with `executed.ipynb` (always kept, also when it
failed: papermill leaves the traceback in the failing cell), `report.html` (code hidden, plotly figures as
<div>s loading one shared `reports/plotly.min.js`, nothing from the network: `report.write_report`) and
`status.json`.

A point counts as finished only if papermill raised nothing, the executed notebook carries no error
output and no `metadata.papermill.exception`, and report.html exists (a dead kernel
or a cell timeout leave `exception` unset, so the metadata alone is not trusted). Finished points are
skipped; anything else (failed, or `running` left by an interrupted sweep) runs again, so re-running the
same command resumes. `reports/index.html` lists every run: notebook, parameters, status, duration,
the notebook's computed "what this shows" text, and links.

The Ray executor submits one `ray.remote(num_cpus=1, num_gpus=G)` task per point to the cluster at
`--address` (or a local Ray started on the spot); it needs the `cluster` extra (`pip install ray`).
"""

from __future__ import annotations

import itertools
import json
import os
import re
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from tqdm import tqdm

from eureka_kit.workbench.report import (
    EXECUTED,
    REPORT,
    STATUS,
    build_index,
    read_status,
    write_plotly_js,
    write_report,
)

# ---------------------------------------------------------------------------------------------
# Grids and keys.


def parse_value(text: str) -> Any:
    """'3' -> 3, '0.5' -> 0.5, 'true'/'false' -> bool, 'none' -> None, anything else the string."""
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def parse_grid(items: list[str]) -> dict[str, list[Any]]:
    """['preset=grpo,cpgd', 'seed=0,1'] -> {'preset': ['grpo', 'cpgd'], 'seed': [0, 1]}.

    A value holding a comma that must stay one string (a notebook's own list parameter) is written with
    '+' as the separator inside it: `arms=grpo+cpgd,pg` gives two points, arms='grpo,cpgd' and arms='pg'.
    """
    grid: dict[str, list[Any]] = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--grid: expected NAME=V1,V2,..., got {item!r}")
        name, values = item.split("=", 1)
        name = name.strip()
        if not name.isidentifier():
            raise ValueError(f"--grid: {name!r} is not a valid parameter name")
        if name in grid:
            raise ValueError(f"--grid: {name!r} given twice")
        vals = [parse_value(v.replace("+", ",")) for v in values.split(",") if v != ""]
        if not vals:
            raise ValueError(f"--grid: {name!r} has no values")
        grid[name] = vals
    return grid


def grid_points(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Cartesian product, in the grid's order (last name varies fastest)."""
    names = list(grid)
    return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*(grid[n] for n in names))]


def run_key(params: dict[str, Any]) -> str:
    """A folder name for a grid point: 'preset=grpo__seed=0' (characters outside [A-Za-z0-9._=,-] -> '-')."""
    if not params:
        return "default"
    parts = [f"{k}={v}" for k, v in params.items()]
    return re.sub(r"[^A-Za-z0-9._=,-]", "-", "__".join(parts))[:180]


# ---------------------------------------------------------------------------------------------
# One grid point.


def _write_status(run_dir: Path, status: dict[str, Any]) -> None:
    tmp = run_dir / (STATUS + ".tmp")
    tmp.write_text(json.dumps(status, indent=2, default=str))
    os.replace(tmp, run_dir / STATUS)


def is_finished(run_dir: Path) -> bool:
    run_dir = Path(run_dir)
    return (read_status(run_dir).get("status") == "ok" and (run_dir / EXECUTED).exists()
            and (run_dir / REPORT).exists())


def notebook_errors(path: Path) -> list[str]:
    """Problems recorded in an executed notebook: papermill's exception flag and every error output."""
    import nbformat

    book = nbformat.read(path, as_version=4)
    problems = []
    if book.metadata.get("papermill", {}).get("exception"):
        problems.append("papermill recorded an exception")
    for i, cell in enumerate(book.cells):
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                problems.append(f"cell {i}: {out.get('ename')}: {out.get('evalue')}")
    return problems


def findings_text(path: Path, max_chars: int = 2000) -> str:
    """The notebook's computed 'What this shows' markdown (its last markdown output); a text longer than
    `max_chars` is cut after its last whole sentence or line that fits, never mid-sentence."""
    import nbformat

    book = nbformat.read(path, as_version=4)
    for cell in reversed(book.cells):
        for out in cell.get("outputs", []):
            text = out.get("data", {}).get("text/markdown")
            if text:
                text = "".join(text) if isinstance(text, list) else text
                if len(text) <= max_chars:
                    return text
                head = text[:max_chars]
                cut = max(head.rfind(". "), head.rfind(".\n"), head.rfind("\n"))
                return (head[:cut + 1] if cut > 0 else head) + "\n\n(continued in the report)"
    return ""


def execute_point(notebook: str, params: dict[str, Any], run_dir: str, *, kernel_name: str = "python3",
                  cwd: str | None = None, execution_timeout: int | None = None, gpu_ids: str | None = None) -> dict[str, Any]:
    """Run `notebook` with `params` into `run_dir`; write executed.ipynb, report.html, status.json.

    Never raises for a notebook failure: the returned (and written) status says ok or failed.
    """
    import papermill as pm

    from eureka_kit.workbench.kernel_client import execute_notebook

    run_dir_p = Path(run_dir)
    run_dir_p.mkdir(parents=True, exist_ok=True)
    if gpu_ids is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu_ids  # the kernel inherits it
    # host and pid of the process that executes the point (a Ray worker under --executor ray), for tracing
    status: dict[str, Any] = {"notebook": str(notebook), "params": params, "status": "running",
                              "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "host": os.uname().nodename,
                              "pid": os.getpid()}
    _write_status(run_dir_p, status)
    t0 = time.perf_counter()
    error = None
    try:
        execute_notebook(notebook, run_dir_p / EXECUTED, parameters=params, kernel_name=kernel_name,
                         progress_bar=False, cwd=cwd, execution_timeout=execution_timeout)
    except pm.PapermillExecutionError as e:
        error = f"{e.ename}: {e.evalue} (cell {e.exec_count})"
    except Exception as e:  # dead kernel, timeout, missing kernel, bad notebook: all count as failures
        error = f"{type(e).__name__}: {e}"
    status["duration_s"] = round(time.perf_counter() - t0, 2)
    executed = run_dir_p / EXECUTED
    problems = [error] if error else []
    if not executed.exists():
        problems.append("no executed notebook was written")
    else:
        problems += [p for p in notebook_errors(executed) if p not in problems]
        if not error and not problems:
            try:
                write_report(executed, run_dir_p / REPORT, plotly_js=os.path.relpath(
                    Path(run_dir_p).parents[1] / "plotly.min.js", run_dir_p))
                status["findings"] = findings_text(executed)
            except Exception as e:  # a report that cannot be built means the run is not finished
                problems.append(f"report: {type(e).__name__}: {e}")
    status.update(status="failed" if problems else "ok", errors=problems,
                  finished=time.strftime("%Y-%m-%dT%H:%M:%S"))
    _write_status(run_dir_p, status)
    return status


# ---------------------------------------------------------------------------------------------
# The sweep.


def _local(jobs: list[tuple[str, dict, str]], max_parallel: int, gpus_per_run: int, on_done: Callable, **kw) -> None:
    if max_parallel <= 1:
        for nb, params, run_dir in jobs:
            gpu = ",".join(str(i) for i in range(gpus_per_run)) if gpus_per_run else None
            on_done(execute_point(nb, params, run_dir, gpu_ids=gpu, **kw))
        return
    import multiprocessing as mp

    with ProcessPoolExecutor(max_workers=max_parallel, mp_context=mp.get_context("spawn")) as pool:
        futures = []
        for slot, (nb, params, run_dir) in enumerate(jobs):
            # pin GPUs per worker slot: slot s gets GPUs [s*G, (s+1)*G) modulo the parallelism
            first = (slot % max_parallel) * gpus_per_run
            gpu = ",".join(str(first + i) for i in range(gpus_per_run)) if gpus_per_run else None
            futures.append(pool.submit(execute_point, nb, params, run_dir, gpu_ids=gpu, **kw))
        for fut in as_completed(futures):
            on_done(fut.result())


def _ray(jobs: list[tuple[str, dict, str]], max_parallel: int, gpus_per_run: int, on_done: Callable,
         address: str | None, **kw) -> None:
    try:
        import ray
    except ImportError as e:
        raise RuntimeError("--executor ray needs Ray: install the cluster extra (pip install 'eureka_kit[cluster]' "
                           "or pip install ray), or use --executor local") from e
    if not ray.is_initialized():
        ray.init(address=address, ignore_reinit_error=True, log_to_driver=False)
    task = ray.remote(num_cpus=1, num_gpus=gpus_per_run)(execute_point)  # Ray sets CUDA_VISIBLE_DEVICES itself
    pending, queue = [], list(jobs)
    limit = max_parallel if max_parallel > 0 else len(jobs)
    while queue or pending:
        while queue and len(pending) < limit:
            nb, params, run_dir = queue.pop(0)
            pending.append(task.remote(nb, params, run_dir, **kw))
        done, pending = ray.wait(pending, num_returns=1)
        for ref in done:
            on_done(ray.get(ref))


def sweep(notebook: str | Path, grid: dict[str, list[Any]], *, out: str | Path = "reports", executor: str = "local",
          max_parallel: int = 1, gpus_per_run: int = 0, address: str | None = None, fixed: dict[str, Any] | None = None,
          force: bool = False, kernel_name: str = "python3", execution_timeout: int | None = None,
          progress: bool = True) -> list[dict[str, Any]]:
    """Execute `notebook` for every grid point not finished yet; return all points' statuses; build the index.

    `fixed` parameters are passed to every point but are not part of the run key.
    """
    notebook = Path(notebook)
    if not notebook.exists():
        raise FileNotFoundError(f"notebook: {notebook} does not exist")
    if executor not in ("local", "ray"):
        raise ValueError(f"--executor: must be local or ray, got {executor!r}")
    out = Path(out)
    base = out / notebook.stem
    points = grid_points(grid)
    jobs, results = [], []
    for point in points:
        run_dir = base / run_key(point)
        if is_finished(run_dir) and not force:
            results.append({**read_status(run_dir), "skipped": True})
        else:
            jobs.append((str(notebook.resolve()), {**(fixed or {}), **point}, str(run_dir.resolve())))
    out.mkdir(parents=True, exist_ok=True)
    write_plotly_js(out)
    bar = tqdm(total=len(points), initial=len(points) - len(jobs), desc=f"sweep {notebook.stem}",
               disable=not progress, ncols=100)

    def on_done(status: dict[str, Any]) -> None:
        results.append(status)
        bar.update(1)
        bar.set_postfix(failed=sum(r.get("status") == "failed" for r in results), refresh=False)
        if status.get("status") == "failed" and progress:
            tqdm.write(f"FAILED {status.get('params')}: {'; '.join(status.get('errors', []))[:300]}")

    kw = dict(kernel_name=kernel_name, execution_timeout=execution_timeout, cwd=str(Path.cwd()))
    try:
        if executor == "ray":
            _ray(jobs, max_parallel, gpus_per_run, on_done, address, **kw)
        else:
            _local(jobs, max_parallel, gpus_per_run, on_done, **kw)
    finally:
        bar.close()
        build_index(out)
    return results


# ---------------------------------------------------------------------------------------------
# CLI (registered in cli.SUBCOMMANDS).


def _cli(args) -> int:
    grid = parse_grid(args.grid or [])
    fixed = {k: v[0] for k, v in parse_grid(args.param or []).items()}
    results = sweep(args.notebook, grid, out=args.out, executor=args.executor, max_parallel=args.max_parallel,
                    gpus_per_run=args.gpus_per_run, address=args.address, fixed=fixed, force=args.force,
                    kernel_name=args.kernel, execution_timeout=args.timeout)
    failed = [r for r in results if r.get("status") != "ok"]
    print(f"{len(results) - len(failed)}/{len(results)} ok; index: {Path(args.out) / 'index.html'}")
    return 1 if failed else 0


def _cli_index(args) -> int:
    print(build_index(args.out))
    return 0


def add_cli(sub) -> None:
    p = sub.add_parser("sweep", help="execute a notebook over a parameter grid with papermill (local or Ray)")
    p.add_argument("notebook", help="path to the .ipynb")
    p.add_argument("--grid", nargs="*", metavar="NAME=V1,V2", help="parameters to sweep (cartesian product)")
    p.add_argument("-p", "--param", nargs="*", metavar="NAME=V", help="fixed parameters (not part of the run key)")
    p.add_argument("--executor", choices=("local", "ray"), default="local")
    p.add_argument("--max-parallel", type=int, default=1, help="notebooks running at once")
    p.add_argument("--gpus-per-run", type=int, default=0, help="GPUs per notebook (Ray resources / local pinning)")
    p.add_argument("--address", default=None, help="Ray cluster address (default: start a local Ray)")
    p.add_argument("--out", default="reports", help="reports folder (reports/<notebook>/<run-key>/)")
    p.add_argument("--force", action="store_true", help="re-run points that already finished")
    p.add_argument("--kernel", default="python3", help="Jupyter kernel name")
    p.add_argument("--timeout", type=int, default=None, help="per-cell execution timeout in seconds")
    p.set_defaults(func=_cli)

    q = sub.add_parser("index", help="rebuild reports/index.html from the sweeps' status files")
    q.add_argument("--out", default="reports")
    q.set_defaults(func=_cli_index)
