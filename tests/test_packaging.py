"""The packaging files agree with each other: pyproject extras, environment.yml, Makefile, CI."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _environment_pip_lines() -> list[str]:
    lines = (ROOT / "environment.yml").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == "- pip:")
    return [line.strip()[2:].strip() for line in lines[start + 1:] if line.strip().startswith("- ")]


def test_cpu_default_pins_the_cpu_torch_and_keeps_gpu_kernels_out():
    project = _pyproject()["project"]
    assert "torch==2.13.0" in project["dependencies"]
    names = {re.split(r"[<>=\[ ]", d)[0].lower() for d in project["dependencies"]}
    assert not names & {"vllm", "deepspeed", "ray", "flash-attn"}
    assert {"notebooks", "gpu", "cluster", "dev"} <= set(project["optional-dependencies"])


def test_environment_yml_installs_the_package_with_the_cluster_extras():
    project = _pyproject()["project"]
    pip_lines = _environment_pip_lines()
    install = [line for line in pip_lines if line.startswith("-e .") or line.startswith(".[")]
    assert install, "environment.yml must install the package itself"
    extras = set(re.search(r"\[(.*)\]", install[0]).group(1).split(","))
    assert extras == {"gpu", "notebooks", "cluster"}
    assert extras <= set(project["optional-dependencies"])
    torch_pins = [line for line in pip_lines if line.startswith("torch")]
    assert torch_pins == [d for d in project["dependencies"] if d.startswith("torch")]


def test_environment_python_satisfies_requires_python():
    text = (ROOT / "environment.yml").read_text()
    major, minor = map(int, re.search(r"python=(\d+)\.(\d+)", text).groups())
    floor = tuple(map(int, re.search(r">=(\d+)\.(\d+)", _pyproject()["project"]["requires-python"]).groups()))
    assert (major, minor) >= floor


def test_ci_runs_exactly_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in readme and "make report" in readme
    commands = [line.strip() for line in ci.splitlines() if line.strip() and not line.strip().startswith("#")]
    # The README's test command runs first; then the numerics-sensitive tests under a second CPU capability, and
    # the vLLM and DeepSpeed tests in their own venvs.
    targets = [c.split()[1] for c in commands if c.startswith("make ")]
    assert targets == ["test", "test-numerics", "test-vllm", "test-deepspeed"]
    assert all(f"`make {t}" in readme for t in targets)
