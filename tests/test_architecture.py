"""The architecture as tests: the import contracts (import-linter, pyproject.toml), the public API paths,
docstring references to documents that exist, and modules short enough to read in one sitting."""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "eureka_kit"


def test_import_contracts_hold_and_there_are_no_cycles():
    """`lint-imports` (a dev dependency, never skipped): layers, forbidden imports and acyclic siblings, with
    function-level imports included."""
    lint = Path(sys.executable).parent / "lint-imports"
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"Contracts: \d+ kept, 0 broken", done.stdout), done.stdout


PUBLIC = {  # documented path -> names (README, docs/design.md)
    "eureka_kit": ["RunConfig", "PRESETS", "ConfigError", "launch", "__version__"],
    "eureka_kit.config": ["RunConfig", "PRESETS"],
    "eureka_kit.losses": ["policy_loss"],
    "eureka_kit.advantages": ["compute", "clip_filter_like_weights", "for_config"],
    "eureka_kit.train": ["train", "Run", "VerifierFailure"],
    "eureka_kit.sft": ["sft"],
    "eureka_kit.runs": ["open", "open_run", "RunDir"],
    "eureka_kit.cli": ["main", "build_parser"],
    "eureka_kit.models": ["load", "build_toy_model", "build_char_tokenizer", "tokenizer_of", "freeze_vision"],
}


@pytest.mark.parametrize("module", sorted(PUBLIC))
def test_public_names_import_from_their_documented_paths(module):
    mod = importlib.import_module(module)
    missing = [name for name in PUBLIC[module] if not hasattr(mod, name)]
    assert not missing, f"{module} lacks {missing}"


def test_public_reexports_are_the_real_objects():
    from eureka_kit import advantages, losses, runs, sft, train
    from eureka_kit.algos import advantages as real_advantages
    from eureka_kit.algos import losses as real_losses
    from eureka_kit.engine import loop
    from eureka_kit.engine import runs as real_runs
    from eureka_kit.engine import sft as real_sft

    assert losses.policy_loss is real_losses.policy_loss
    assert advantages.compute is real_advantages.compute
    assert train.train is loop.train and sft.sft is real_sft.sft and runs.open is real_runs.open


def test_the_public_train_knows_the_prm_signal():
    """`eureka_kit.train` imports the PRM feature, which registers its signal with the loop's one hook."""
    code = ("import eureka_kit.train\nfrom eureka_kit.engine import signals\n"
            "print(sorted(signals.BUILDERS))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "['shaped_reward', 'step_advantage']"


def _py_files():
    return sorted(PACKAGE.rglob("*.py"))


def test_every_document_a_docstring_or_comment_cites_exists():
    """Any `*.md` the package cites is a path from the repository root that exists (docs/design.md, ...)."""
    missing = []
    for path in _py_files():
        for ref in re.findall(r"[\w./-]*[A-Za-z]\.md\b", path.read_text()):
            if not (ROOT / ref).is_file():
                missing.append(f"{path.relative_to(ROOT)}: {ref}")
    assert not missing, missing


def test_every_subpackage_says_what_it_is_and_what_it_may_import():
    for init in sorted(PACKAGE.glob("*/__init__.py")):
        doc = importlib.import_module(f"eureka_kit.{init.parent.name}").__doc__ or ""
        assert "May import" in doc, f"{init.relative_to(ROOT)}: the docstring names what it may import"
