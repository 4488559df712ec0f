"""Fault tests: real SIGKILLs of training processes, disk-full / read-only run directories, bad dataset rows,
safety defaults. docs/reliability.md lists what each test guarantees and the faults injected."""

from __future__ import annotations

import ast
import errno
import io
import json
import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from eureka_kit.config import PRESETS, RunConfig
from eureka_kit.data import toyworld
from eureka_kit.data.mmk12 import MMK12FormatError, load
from eureka_kit.engine.loop import train
from eureka_kit.engine.runs import RunDir, open_run
from eureka_kit.models import build_toy_model

ROOT = Path(__file__).resolve().parents[1]
SMALL = dict(rollout_batch_size=4, group_size=4, train_batch_size=8, micro_batch_size=8, max_len=12, lr=1e-3)
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def _parity(completions, golds, **_):
    return [dict(accuracy=float(len(c) % 2), format=0.0, total=float(len(c) % 2), timeout=0.0) for c in completions]


@pytest.fixture(scope="module")
def problems():
    return toyworld.load("train", "math", seed=0, n_per_level=4)


# ---------------------------------------------------------------------------------------------
# 1. kill -9 of a real training process, then resume

CHILD = r'''
import os, sys, time
from pathlib import Path
import torch
torch.set_num_threads(1)
run_dir, mode = sys.argv[1], sys.argv[2]
from eureka_kit.data import rewards
rewards.score_batch = lambda completions, golds, **_: [
    dict(accuracy=float(len(c) % 2), format=0.0, total=float(len(c) % 2), timeout=0.0) for c in completions]
if mode == "hang_in_checkpoint_2":  # a slow disk: block inside the step-2 checkpoint write, announce it
    real_save = torch.save
    def slow_save(obj, f, *args, **kwargs):
        if isinstance(obj, dict) and obj.get("step") == 2:
            Path(run_dir + ".hanging").write_text(str(f))
            time.sleep(600)
        return real_save(obj, f, *args, **kwargs)
    torch.save = slow_save
from eureka_kit.config import RunConfig
from eureka_kit.models import build_toy_model
from eureka_kit.data import toyworld
from eureka_kit.engine.loop import train
problems = toyworld.load("train", "math", seed=0, n_per_level=4)
cfg = RunConfig.from_preset("grpo", run_dir=run_dir, resume=(mode == "resume"), save_every=1, num_steps=4,
                            rollout_batch_size=4, group_size=4, train_batch_size=8, micro_batch_size=8,
                            max_len=12, lr=1e-3)
model, tok = build_toy_model(seed=99 if mode == "resume" else 4)  # resume: the checkpoint must overwrite it
train(cfg, policy=model, processor=tok, problems=problems, progress=False)
print("DONE")
'''


def _spawn(script: Path, run_dir: Path, mode: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, str(script), str(run_dir), mode], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 50.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"child exited ({proc.returncode}) before {path} appeared:\n{proc.stdout.read()}")
        assert time.monotonic() < deadline, f"{path} did not appear within {timeout} s"
        time.sleep(0.005)


def _finish(proc: subprocess.Popen, timeout: float = 50.0) -> None:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0 and "DONE" in out, out


def _assert_same_run(ref: Path, other: Path) -> None:
    a, b = open_run(ref).metrics(), open_run(other).metrics()
    assert list(b.step) == [0, 1, 2, 3], list(b.step)  # nothing duplicated, nothing lost
    keys = [k for k in a.columns if not k.startswith("perf/")]
    assert set(keys) <= set(b.columns)
    for key in keys:
        assert a[key].tolist() == pytest.approx(b[key].tolist(), rel=1e-5, abs=1e-6, nan_ok=True), key
    ra, rb = RunDir(ref), RunDir(other)
    assert ra.rollout_steps() == rb.rollout_steps() == [0, 1, 2, 3]
    for step in range(4):
        assert ra.rollouts(step).completion.tolist() == rb.rollouts(step).completion.tolist(), step
    pa_, pb = ra.problems(), rb.problems()
    assert len(pa_) == len(pb) and pa_.attempts.sum() == pb.attempts.sum()
    assert [p.name for p in ra.checkpoints()] == [p.name for p in rb.checkpoints()]
    assert not list((other / "checkpoints").glob("*.tmp"))


@pytest.mark.slow
def test_sigkill_mid_run_and_during_a_checkpoint_write_then_resume_reproduces_the_run(tmp_path):
    """Three real processes at once: an uninterrupted run; one SIGKILLed as soon as the step-1 checkpoint
    appears (somewhere in step 2); one SIGKILLed while it is inside the step-2 checkpoint write (a half
    written `step_000002.tmp` folder). Both killed runs resume in new processes (resume=True, different
    init) and must reproduce the uninterrupted run: metrics (perf/* aside), rollouts, problems, checkpoints."""
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    ref, mid, ckpt = tmp_path / "ref", tmp_path / "mid", tmp_path / "ckpt"
    p_ref, p_mid, p_ckpt = _spawn(script, ref, "fresh"), _spawn(script, mid, "fresh"), \
        _spawn(script, ckpt, "hang_in_checkpoint_2")
    try:
        _wait_for(mid / "checkpoints" / "step_000001", p_mid)
        p_mid.send_signal(signal.SIGKILL)
        _wait_for(Path(str(ckpt) + ".hanging"), p_ckpt)
        p_ckpt.send_signal(signal.SIGKILL)
        assert p_mid.wait(10) == -signal.SIGKILL and p_ckpt.wait(10) == -signal.SIGKILL
    finally:
        for p in (p_mid, p_ckpt):
            if p.poll() is None:
                p.kill()
                p.wait()
    # Killed mid-run: not finished.
    assert len(RunDir(mid).checkpoints()) < 4
    # Killed inside the write: the half checkpoint is only a .tmp folder; the last good one is step 1.
    assert (ckpt / "checkpoints" / "step_000002.tmp").is_dir()
    assert not (ckpt / "checkpoints" / "step_000002.tmp" / "trainer.pt").exists()
    assert [p.name for p in RunDir(ckpt).checkpoints()] == ["step_000000", "step_000001"]
    assert len(open_run(ckpt).metrics()) == 3  # step 2 was logged before its checkpoint: it is redone

    r_mid, r_ckpt = _spawn(script, mid, "resume"), _spawn(script, ckpt, "resume")
    _finish(p_ref)
    _finish(r_mid)
    _finish(r_ckpt)
    _assert_same_run(ref, mid)
    _assert_same_run(ref, ckpt)


# ---------------------------------------------------------------------------------------------
# 2. disk full / read-only run directory: a clear error, the last good checkpoint kept


def _train_failing_after_step0(tmp_path, problems, make_it_fail):
    """Train 3 steps with save_every=1; `make_it_fail(run_path)` runs right after the step-0 checkpoint."""
    real = RunDir.save_checkpoint
    saved = {}

    def save(self, step, model, *args, **kwargs):
        out = real(self, step, model, *args, **kwargs)
        if step == 0:
            saved.update({k: v.detach().clone() for k, v in model.state_dict().items()})
            make_it_fail(self.path)
        return out

    cfg = RunConfig.from_preset("grpo", run_dir=str(tmp_path / "run"), save_every=1, num_steps=3, **SMALL)
    model, tok = build_toy_model(seed=4)
    return cfg, model, tok, save, saved


def _assert_last_good_checkpoint_intact(run_path: Path, saved: dict, problems) -> None:
    from eureka_kit import models

    rd = RunDir(run_path)
    assert [p.name for p in rd.checkpoints()] == ["step_000000"]
    loaded, _ = models.load(str(rd.checkpoints()[0]))
    state = loaded.state_dict()
    assert all(torch.equal(state[k], v) for k, v in saved.items() if k in state)
    # ...and the run resumes from it.
    cfg = RunConfig.from_preset("grpo", run_dir=str(run_path), save_every=1, num_steps=2, resume=True, **SMALL)
    model, tok = build_toy_model(seed=99)
    run = train(cfg, policy=model, processor=tok, problems=problems, progress=False)
    assert [h["step"] for h in run.history] == [0, 1]


def test_read_only_checkpoints_folder_is_a_clear_error_and_keeps_the_last_checkpoint(
        tmp_path, problems, monkeypatch, parity_reward):
    """A read-only checkpoints folder: chmod 555, or as root (who ignores file permissions) the EACCES that
    the step-1 checkpoint's mkdir would raise, injected."""
    real_mkdir, armed = Path.mkdir, {"on": False}

    def mkdir(self, *args, **kwargs):
        if armed["on"] and self.name.endswith(".tmp"):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
        return real_mkdir(self, *args, **kwargs)

    def make_read_only(run: Path) -> None:
        (run / "checkpoints").chmod(0o555)
        armed["on"] = IS_ROOT

    cfg, model, tok, save, saved = _train_failing_after_step0(tmp_path, problems, make_read_only)
    monkeypatch.setattr(RunDir, "save_checkpoint", save)
    monkeypatch.setattr(Path, "mkdir", mkdir)
    try:
        with pytest.raises(PermissionError) as info:
            train(cfg, policy=model, processor=tok, problems=problems, progress=False)
        assert str(tmp_path / "run" / "checkpoints") in str(info.value)
    finally:
        (tmp_path / "run" / "checkpoints").chmod(0o755)
        armed["on"] = False
    monkeypatch.undo()
    monkeypatch.setattr("eureka_kit.data.rewards.score_batch", _parity)
    _assert_last_good_checkpoint_intact(tmp_path / "run", saved, problems)


def test_disk_full_at_the_checkpoint_rename_is_a_clear_error_and_keeps_the_last_checkpoint(
        tmp_path, problems, monkeypatch, parity_reward):
    """ENOSPC injected at the final os.replace of the step-1 checkpoint (simulated: works as root too)."""
    real_replace = os.replace
    armed = {"on": False}

    def replace(src, dst, *a, **k):
        if armed["on"] and Path(src).name.startswith("step_") and Path(src).name.endswith(".tmp"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(src))
        return real_replace(src, dst, *a, **k)

    cfg, model, tok, save, saved = _train_failing_after_step0(tmp_path, problems, lambda run: armed.update(on=True))
    monkeypatch.setattr(RunDir, "save_checkpoint", save)
    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError, match="No space left on device") as info:
        train(cfg, policy=model, processor=tok, problems=problems, progress=False)
    assert info.value.errno == errno.ENOSPC and "step_000001" in str(info.value)
    armed["on"] = False
    _assert_last_good_checkpoint_intact(tmp_path / "run", saved, problems)


def test_real_file_size_limit_during_a_checkpoint_is_a_clear_error_and_keeps_the_last_checkpoint(
        tmp_path, problems, monkeypatch, parity_reward):
    """A real kernel error, also as root: RLIMIT_FSIZE (256 KiB) after the step-0 checkpoint, so writing the
    step-1 weights fails with EFBIG inside safetensors. The error must be an OSError naming the checkpoint."""
    resource = pytest.importorskip("resource")
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a killed process
    cfg, model, tok, save, saved = _train_failing_after_step0(
        tmp_path, problems, lambda run: resource.setrlimit(resource.RLIMIT_FSIZE, (256 * 1024, hard)))
    monkeypatch.setattr(RunDir, "save_checkpoint", save)
    try:
        with pytest.raises(Exception, match="File too large|os error 27"):
            train(cfg, policy=model, processor=tok, problems=problems, progress=False)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old_handler)
    assert not (tmp_path / "run" / "checkpoints" / "step_000001").exists()  # no half checkpoint published
    _assert_last_good_checkpoint_intact(tmp_path / "run", saved, problems)


def test_a_failed_checkpoint_write_is_an_oserror_naming_the_checkpoint(tmp_path):
    resource = pytest.importorskip("resource")
    rd = RunDir(tmp_path / "run").create({"seed": 0})
    model, tok = build_toy_model(seed=0)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (256 * 1024, hard))
    try:
        with pytest.raises(OSError) as info:
            rd.save_checkpoint(1, model, processor=tok)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old_handler)
    assert "step_000001" in str(info.value)
    assert not (tmp_path / "run" / "checkpoints" / "step_000001.tmp").exists()  # no half folder left behind


# ---------------------------------------------------------------------------------------------
# 4. bad dataset rows (tests/test_mmk12.py covers: empty question (parquet), missing key / invalid JSON /
#    image file not found / empty answer (jsonl)). Added here: what it does not.


def _png(size=(8, 8)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, "red").save(buf, format="PNG")
    return buf.getvalue()


def _png_header_only(width: int, height: int) -> bytes:
    """A valid PNG header claiming width x height pixels (a decompression bomb), a few bytes on disk."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


def _ok_row(i=0, **kw):
    return {**dict(id=f"q{i}", question="What is 1+1?", answer="2", image={"bytes": _png(), "path": None},
                   subject="math"), **kw}


def _write_parquet(tmp_path, bad_row) -> Path:
    path = tmp_path / "train.parquet"
    pq.write_table(pa.Table.from_pylist([_ok_row(0), bad_row]), path)
    return path


def _assert_bad_row_1(path: Path, reason: str) -> None:
    with pytest.raises(MMK12FormatError, match=rf"{path.name}: row 1: {reason}"):
        load(path, "train")
    res = load(path, "train", skip_bad_rows=True)
    assert len(res.rows) == 1 and res.skipped == 1 and "row 1" in res.errors[0]


@pytest.mark.parametrize("bad,reason", [
    ({k: v for k, v in _ok_row(1).items() if k != "answer"}, "answer"),  # parquet fills the missing column with null
    (_ok_row(1, question="   "), "question"),
    (_ok_row(1, subject="astrology"), "subject"),
])
def test_parquet_rows_missing_answer_blank_question_unknown_subject(tmp_path, bad, reason):
    _assert_bad_row_1(_write_parquet(tmp_path, bad), reason)


@pytest.mark.parametrize("answer", [[1, 2], None, {"x": 1}])
def test_jsonl_answer_of_the_wrong_type(tmp_path, answer):
    msg = json.dumps([{"role": "user", "content": "What is 1+1?"}])
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps({"message": msg, "answer": "2"}) + "\n" + json.dumps({"message": msg, "answer": answer}) + "\n")
    _assert_bad_row_1(path, "answer")


@pytest.mark.parametrize("record", [
    {"message": json.dumps([{"role": "user", "content": [{"type": "text", "text": 5}]}]), "answer": "2"},
    {"message": json.dumps([{"role": "user", "content": 5}]), "answer": "2"},
    {"message": "5", "answer": "2"},
    {"message": json.dumps([{"role": "user", "content": [{"type": "image", "image": 5},
                                                         {"type": "text", "text": "q"}]}]), "answer": "2"},
], ids=["text-int", "content-int", "message-int", "image-int"])
def test_jsonl_wrong_types_name_file_and_row(tmp_path, record):
    ok = {"message": json.dumps([{"role": "user", "content": "What is 1+1?"}]), "answer": "2"}
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps(ok) + "\n" + json.dumps(record) + "\n")
    _assert_bad_row_1(path, "")


@pytest.mark.parametrize("image", [b"definitely not an image", _png()[:40], _png_header_only(100_000, 100_000)],
                         ids=["garbage", "truncated", "huge-100k-x-100k"])
def test_unreadable_or_huge_image_names_file_and_row(tmp_path, image):
    _assert_bad_row_1(_write_parquet(tmp_path, _ok_row(1, image={"bytes": image, "path": None})), "image")


def test_training_on_a_local_mmk12_folder_gets_a_list_of_rows(tmp_path):
    from eureka_kit.data.problems import ProblemStream, load_problems

    path = tmp_path / "train.parquet"
    pq.write_table(pa.Table.from_pylist([_ok_row(0), _ok_row(1)]), path)
    cfg = RunConfig.from_preset("grpo", task="mmk12", data_path=str(path))
    problems = load_problems(cfg)
    assert [r["id"] for r in ProblemStream(problems, 0).take(2)] in (["q0", "q1"], ["q1", "q0"])


# ---------------------------------------------------------------------------------------------
# 4b. invalid parameters on the real notebooks: a clear error from the validation cell, before any model work

NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
# One bad value per notebook, covering the three ways a parameter goes wrong: out of range, unknown preset
# name, wrong type. A new notebook needs an entry (the test says so before starting a kernel).
BAD_PARAMETER = {
    "00_tour": ("lr", "fast", "must be a number > 0"),
    "10_kl_removal": ("profile", "huge", "must be one of quick, full"),
    "11_clipping": ("workers", -1, "must be a positive integer"),
    "12_solved_vs_never_solved": ("findings_dir", "/no/such/folder", "must be None or an existing local folder"),
    "13_rl_vs_sft_generalization": ("workers", 2.5, "must be a positive integer"),
    "14_process_rewards": ("label_levels", "1,two", "must be a list of integers"),
    "15_train_inference_mismatch": ("profile", "tiny", "must be one of smoke, quick, full"),
    "16_objectives_same_batch": ("progress", "yes", "must be True or False"),
    "20_ratio_explorer": ("replay_preset", "cpgd2", f"must be one of {', '.join(PRESETS)}"),
}


def _parameters_and_validation_cells(book) -> tuple[int, int]:
    """Indices of the `parameters` cell and of the first code cell after it (the validation cell)."""
    params = next(i for i, c in enumerate(book.cells) if "parameters" in c.metadata.get("tags", []))
    return params, next(i for i in range(params + 1, len(book.cells)) if book.cells[i].cell_type == "code")


def _parameter_names(source: str) -> set[str]:
    return {t.target.id if isinstance(t, ast.AnnAssign) else t.targets[0].id for t in ast.parse(source).body}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_notebook_parameter_has_a_validation_rule(path):
    nbformat = pytest.importorskip("nbformat")
    book = nbformat.read(path, as_version=4)
    params, check = _parameters_and_validation_cells(book)
    calls = [n for n in ast.walk(ast.parse(book.cells[check].source))
             if isinstance(n, ast.Call) and getattr(n.func, "attr", "") == "validate"]
    assert calls, f"{path.name}: the cell after the parameters does not call P.validate"
    ruled = {k.arg for k in calls[0].keywords}
    assert _parameter_names(book.cells[params].source) <= ruled, "parameters without a rule"


def test_run_root_must_be_a_folder_path():
    from eureka_kit.workbench import notebook_params as P

    assert P.output_dir("run_root", "runs/notebooks") == "runs/notebooks"
    for bad in (5, "", "  ", None):
        with pytest.raises(P.NotebookParameterError, match="parameter 'run_root': must be a non-empty folder path"):
            P.output_dir("run_root", bad)


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_a_bad_notebook_parameter_fails_in_the_validation_cell_before_any_training(path, tmp_path):
    nbformat = pytest.importorskip("nbformat")
    pm = pytest.importorskip("papermill")
    from eureka_kit.workbench.kernel_client import execute_notebook

    assert path.stem in BAD_PARAMETER, f"add a bad value for one of {path.name}'s parameters to BAD_PARAMETER"
    name, bad, allowed = BAD_PARAMETER[path.stem]
    book = nbformat.read(path, as_version=4)
    assert name in _parameter_names(book.cells[_parameters_and_validation_cells(book)[0]].source)
    out, runs = tmp_path / "out.ipynb", tmp_path / "runs"
    with pytest.raises(pm.PapermillExecutionError) as failed:  # the timeout bounds a validation that lets it through
        execute_notebook(str(path), str(out), parameters={name: bad, "run_root": str(runs)}, kernel_name="python3",
                            progress_bar=False, cwd=str(tmp_path), execution_timeout=300)
    assert failed.value.ename == "NotebookParameterError"
    assert f"parameter {name!r}: {allowed}" in failed.value.evalue and repr(bad) in failed.value.evalue

    book = nbformat.read(out, as_version=4)
    params, _ = _parameters_and_validation_cells(book)
    injected = params + 1
    assert "injected-parameters" in book.cells[injected].metadata.get("tags", [])
    errors = [i for i, c in enumerate(book.cells) for o in c.get("outputs", []) if o.get("output_type") == "error"]
    check = next(i for i in range(injected + 1, len(book.cells)) if book.cells[i].cell_type == "code")
    assert errors == [check], f"the error is in cell {errors}, not in the validation cell {check}"
    later = [c for c in book.cells[check + 1:] if c.cell_type == "code"]
    assert later and all(c.execution_count is None and not c.outputs for c in later), "cells ran after the error"
    assert not runs.exists(), "a run directory was created: training started"


# ---------------------------------------------------------------------------------------------
# 5. safety defaults


def test_models_load_defaults_to_no_remote_code_and_safetensors(tmp_path, monkeypatch):
    from eureka_kit.models import loading as models

    model, tok = build_toy_model(seed=0)
    model.save_pretrained(tmp_path, safe_serialization=True)
    tok.save_pretrained(tmp_path)
    seen = []
    for cls in (models.AutoConfig, models.AutoModelForCausalLM):
        real = cls.from_pretrained.__func__

        def spy(klass, *args, _real=real, _name=cls.__name__, **kwargs):
            seen.append((_name, kwargs))
            return _real(klass, *args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", classmethod(spy))
    models.load(str(tmp_path))
    assert {n for n, _ in seen} == {"AutoConfig", "AutoModelForCausalLM"}
    assert all(kw.get("trust_remote_code") is False for _, kw in seen), seen
    assert all(kw["use_safetensors"] is True for n, kw in seen if n == "AutoModelForCausalLM")


def test_models_load_refuses_pickle_only_weights(tmp_path, monkeypatch):
    from eureka_kit import models

    model, tok = build_toy_model(seed=0)
    model.config.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")  # pickle weights only
    assert (tmp_path / "pytorch_model.bin").exists() and not (tmp_path / "model.safetensors").exists()
    unpickled = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: unpickled.append(a) or real_load(*a, **k))
    with pytest.raises(OSError, match="safetensors"):
        models.load(str(tmp_path))
    assert not unpickled, "pytorch_model.bin was unpickled"


def _package_calls():
    for path in sorted((ROOT / "eureka_kit").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Call):
                yield path.relative_to(ROOT), node


def test_package_never_evals_and_torch_load_is_weights_only():
    offenders, torch_loads = [], 0
    for path, call in _package_calls():
        f = call.func
        if isinstance(f, ast.Name) and f.id in ("eval", "exec", "compile", "__import__"):
            offenders.append(f"{path}:{call.lineno}: {f.id}(")
        if isinstance(f, ast.Attribute) and f.attr == "load" and isinstance(f.value, ast.Name) and f.value.id == "torch":
            torch_loads += 1
            ok = any(k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
                     for k in call.keywords)
            if not ok:
                offenders.append(f"{path}:{call.lineno}: torch.load without weights_only=True")
    assert torch_loads >= 1  # the scan sees the resume path's torch.load
    assert not offenders, offenders


def test_papermill_parameters_are_injected_as_values_never_code():
    """What `eureka-kit sweep` passes through papermill becomes literal assignments, whatever the text holds."""
    translators = pytest.importorskip("papermill.translators")
    hostile = {"a": '"""; import os; os.system("touch pwned"); """', "b": "1\n__import__('os').getcwd()",
               "c": "'); exec('1') #", "d": {"k": [1, 2.5, None, True, "x\"y"]}, "e": float("nan"), "f": -3}
    code = translators.translate_parameters("python3", "python", hostile, comment="Parameters")
    statements = ast.parse(code).body
    assert len(statements) == len(hostile)
    for node in statements:
        assert isinstance(node, ast.Assign) and len(node.targets) == 1, ast.dump(node)
        name = node.targets[0].id
        if name == "e":  # NaN has no literal: papermill writes float('nan'), a call on a constant
            assert ast.unparse(node.value) == "float('nan')"
            continue
        assert ast.literal_eval(node.value) == hostile[name]
