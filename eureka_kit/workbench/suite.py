"""The README's main job: the whole report suite, offline, in one call (`eureka-kit report`, `make report`).

    reports/findings/index.html           the findings on the toy world (findings_run.run_profile + findings_page)
    reports/<notebook>/report/            every notebook in SUITE, executed by papermill (sweep.execute_point)
    reports/index.html                    the findings table, then every report and notebook run

SUITE is data: notebook name -> report-sized parameters, chosen so the whole `make report` (quick profile) fits
in 10 minutes on a 2-core CPU (benchmarks/toy_suite_time.sh measures it). A new notebook joins the suite with one
entry; FINDINGS_DIR in its parameters becomes the findings folder, so notebooks 10-13 view the findings run
instead of training again, and RUNS_DIR a folder beside the reports one, so that run directories (checkpoints,
rollouts) keep the reports folder small. A notebook already finished with the same parameters is skipped, so re-running
resumes; a failed one keeps its executed notebook (with the error cell) and shows as failed in the index.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

NOTEBOOKS_DIR = Path(__file__).resolve().parents[2] / "notebooks"
RUN_KEY = "report"

FINDINGS_DIR = "{findings_dir}"  # replaced by the findings folder of this suite run
RUNS_DIR = "{runs_dir}"  # replaced by <out>/../runs/notebooks: run directories stay out of the reports folder
# A cell still running after this long fails its notebook (the index shows it) instead of stalling the whole job;
# the longest suite cell takes about a minute on 2 cores.
CELL_TIMEOUT_S = 900

# Notebooks 10-13 view the findings run; the others run report-sized versions of their own defaults.
SUITE: dict[str, dict[str, Any]] = {
    "00_tour": dict(num_steps=8, run_root=RUNS_DIR),
    "10_kl_removal": dict(findings_dir=FINDINGS_DIR),
    "11_clipping": dict(findings_dir=FINDINGS_DIR),
    "12_solved_vs_never_solved": dict(findings_dir=FINDINGS_DIR),
    "13_rl_vs_sft_generalization": dict(findings_dir=FINDINGS_DIR),
    "14_process_rewards": dict(run_root=RUNS_DIR, policy_steps=150, label_per_level=10, num_rollouts=8, max_searches=10,
                               rollout_budget=64, prm_epochs=3, test_per_level=4, rl_steps=6, rl_batch=4),
    "15_train_inference_mismatch": dict(run_root=RUNS_DIR, profile="quick"),
    "20_ratio_explorer": dict(run_root=RUNS_DIR),
}


def build_suite(out: str | Path = "reports", *, notebooks: list[str] | None = None, findings: bool = True,
                profile: str = "quick", workers: int = 2, force: bool = False,
                suite: dict[str, dict[str, Any]] | None = None, notebooks_dir: str | Path = NOTEBOOKS_DIR,
                progress: bool = True) -> list[dict[str, Any]]:
    """Run the findings `profile` into out/findings (unless `findings` is False), run each notebook of `suite`
    (default SUITE; only `notebooks` if given), write `out/index.html`, print the elapsed time. Returns the
    notebook runs' statuses.

    Notebook runs write their run directories inside their own report folder (papermill's cwd).
    """
    from eureka_kit.workbench.findings_page import findings_page
    from eureka_kit.workbench.findings_run import run_profile
    from eureka_kit.workbench.report import build_index, write_plotly_js
    from eureka_kit.workbench.sweep import execute_point, is_finished, read_status

    suite = SUITE if suite is None else suite
    names = list(suite) if notebooks is None else notebooks
    unknown = [n for n in names if n not in suite]
    if unknown:
        raise ValueError(f"--notebooks: {unknown} not in the suite; choose from {list(suite)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_plotly_js(out)
    started = time.perf_counter()
    findings_dir = (out / "findings").resolve()
    if findings:
        result = run_profile(profile, findings_dir, work=out.resolve().parent / "runs" / "findings", workers=workers,
                             progress=progress)
        page = findings_page(findings_dir, result, plotly_js="../plotly.min.js")  # one plotly.js per reports folder
        if profile == "full":  # the reference run: findings.json and a small tables-only page, to commit
            reference = out / "reference"
            reference.mkdir(parents=True, exist_ok=True)
            (reference / "findings.json").write_text(json.dumps(result, indent=1, default=float))
            findings_page(reference, result, charts=False, reference=None, cells=findings_dir / "cells")
        print(f"[findings] {page}: " + "; ".join(f"{r['id']} {r['verdict']}" for r in result["findings"]), flush=True)
    results = []
    for i, name in enumerate(names, 1):
        notebook = Path(notebooks_dir) / f"{name}.ipynb"
        run_dir = (out / name / RUN_KEY).resolve()
        where = {FINDINGS_DIR: str(findings_dir), RUNS_DIR: str(out.resolve().parent / "runs" / "notebooks")}
        params = {k: where.get(v, v) if isinstance(v, str) else v for k, v in suite[name].items()}
        params = json.loads(json.dumps(params))  # as status.json will hold them
        if not force and is_finished(run_dir) and read_status(run_dir).get("params") == params:
            print(f"[{i}/{len(names)}] {name}: finished earlier with the same parameters, skipped", flush=True)
            results.append({**read_status(run_dir), "skipped": True})
            continue
        print(f"[{i}/{len(names)}] {name} {params} ...", flush=True)
        status = execute_point(str(notebook), params, str(run_dir), cwd=str(run_dir), execution_timeout=CELL_TIMEOUT_S)
        print(f"[{i}/{len(names)}] {name}: {status['status']} in {status['duration_s']:.0f} s"
              + (f" ({'; '.join(status['errors'])[:300]})" if status["errors"] else ""), flush=True)
        results.append(status)
    index = build_index(out)
    failed = sum(r.get("status") != "ok" for r in results)
    print(f"index: {index}; {len(results) - failed}/{len(results)} notebooks ok; "
          f"elapsed {time.perf_counter() - started:.0f} s", flush=True)
    return results
