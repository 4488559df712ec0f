"""Toy base policy: deterministic build, cache, SFT reuse; the slow test checks the issue's targets."""

import pytest
import torch
from safetensors.torch import load_file

from eureka_kit.data import toyworld
from eureka_kit.engine.base_policy import SFTConfig, build_base_policy, pass_stats, sample_pass_counts
from eureka_kit.models import load

TINY = SFTConfig(steps=4, batch_size=8, n_per_level=10, warmup=2)


def test_build_is_deterministic_and_cached(tmp_path):
    a = build_base_policy(0, TINY, root=tmp_path / "a", progress=False)
    b = build_base_policy(0, TINY, root=tmp_path / "b", progress=False)
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    c = build_base_policy(1, TINY, root=tmp_path / "a", progress=False)
    wc = load_file(c / "model.safetensors")
    assert c != a and not torch.equal(wc["model.embed_tokens.weight"], wa["model.embed_tokens.weight"])
    mtime = (a / "model.safetensors").stat().st_mtime_ns
    assert build_base_policy(0, TINY, root=tmp_path / "a", progress=False) == a  # cached: not rebuilt
    assert (a / "model.safetensors").stat().st_mtime_ns == mtime


def test_cache_env_var(tmp_path, monkeypatch):
    monkeypatch.setenv("EUREKA_KIT_CACHE", str(tmp_path))
    assert build_base_policy(0, TINY, progress=False).is_relative_to(tmp_path)


def test_pass_stats():
    s = pass_stats([0, 16, 3, 8], 16)
    assert s == dict(accuracy=27 / 64, never=0.25, rare=0.25, always=0.25)


@pytest.mark.slow
def test_default_base_policy_meets_targets(tmp_path):
    torch.set_num_threads(2)
    model, tok = load(str(build_base_policy(0, root=tmp_path, progress=False)))
    stats = {s: pass_stats(sample_pass_counts(model, tok, toyworld.generate("test", s, 24, seed=0), 16), 16)
             for s in toyworld.SUBJECTS}
    m = stats["math"]
    assert 0.2 <= m["accuracy"] <= 0.7 and m["never"] >= 0.15 and m["rare"] >= 0.15, m
    for s in toyworld.OOD_SUBJECTS:
        assert 0 < stats[s]["accuracy"] < m["accuracy"], (s, stats[s])


def test_cli_toy_build(tmp_path, monkeypatch, capsys):
    from eureka_kit.cli import main
    monkeypatch.setenv("EUREKA_KIT_CACHE", str(tmp_path))
    assert main(["toy", "build", "--steps", "2", "--seed", "3"]) == 0
    out = capsys.readouterr().out.strip().splitlines()[-1]
    assert out.startswith(str(tmp_path)) and "seed3" in out


def test_sft_should_stop_ends_training():
    from eureka_kit.engine.base_policy import sft, sft_examples
    from eureka_kit.models import build_toy_model

    model, tok = build_toy_model(seed=0)
    examples = sft_examples(tok, toyworld.generate("train", "math", 4, seed=0, levels=(0,)))
    asked = []
    losses = sft(model, tok, examples, TINY, progress=False, should_stop=lambda n: asked.append(n) or n == 3)
    assert len(losses) == 3 and asked == [1, 2, 3]


def test_build_stops_at_first_check_reaching_the_probe_accuracy(tmp_path, monkeypatch):
    import json
    from dataclasses import replace

    import pandas as pd

    from eureka_kit.engine import base_policy

    probe_sizes, scores = [], iter([0.25, 0.5, 0.75])

    def fake_greedy(model, tok, problems, cfg, *, greedy=False, **kw):  # stands in for the slow greedy eval
        assert greedy and not model.training
        probe_sizes.append(len(problems))
        return pd.DataFrame(dict(successes=[next(scores)]))

    monkeypatch.setattr(base_policy, "sample_problems", fake_greedy)
    cfg = SFTConfig(steps=12, batch_size=8, n_per_level=10, warmup=2, first_check=4, check_every=2,
                    stop_at_accuracy=0.5, probe_per_level=2)
    out = build_base_policy(0, cfg, root=tmp_path, progress=False)
    meta = json.loads((out / "sft.json").read_text())
    assert meta["steps_run"] == 6 and meta["probe_accuracy"] == {"4": 0.25, "6": 0.5}
    assert probe_sizes == [2 * len(toyworld.LEVELS)] * 2  # every level, the untaught top one included
    off = build_base_policy(0, replace(cfg, stop_at_accuracy=0.0), root=tmp_path, progress=False)
    assert json.loads((off / "sft.json").read_text())["steps_run"] == 12 and len(probe_sizes) == 2
