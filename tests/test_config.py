"""RunConfig and the presets: every preset builds, presets differ only in the choices they name,
invalid values raise a ConfigError naming the field and its allowed values, round trips, field docs."""

from __future__ import annotations

import itertools
import json

import pytest

from eureka_kit import config
from eureka_kit.config import ALGORITHM_FIELDS, PRESETS, ConfigError, RunConfig

EXPECTED_PRESETS = {"pg", "cpg", "pgd", "cpgd", "grpo", "grpo_kl", "grpo_dual_clip", "rloo", "reinforce_pp",
                    "reinforce_pp_baseline", "dr_grpo", "dapo", "cispo", "gspo",
                    "sapo", "gmpo", "clip_cov", "kl_cov", "dppo_tv", "luspo"}


def test_issue_presets_present_with_paper_links():
    assert EXPECTED_PRESETS <= set(PRESETS)
    for name, choices in PRESETS.items():
        assert choices["paper"].startswith("https://arxiv.org/abs/"), name


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_constructs(name):
    cfg = RunConfig.from_preset(name)
    assert cfg.preset == name
    for key, value in PRESETS[name].items():
        if key != "paper":
            assert getattr(cfg, key) == value


def _diff(a: RunConfig, b: RunConfig) -> set[str]:
    return {f for f in config.field_names() if f != "preset" and getattr(a, f) != getattr(b, f)}


@pytest.mark.parametrize("a, b, fields", [
    ("cpg", "cpgd", {"drift_coef"}),
    ("pg", "pgd", {"drift_coef"}),
    ("pg", "cpg", {"surrogate"}),
    ("grpo", "grpo_kl", {"kl_coef"}),
    ("grpo", "grpo_dual_clip", {"dual_clip"}),
    ("grpo", "cpg", {"surrogate", "aggregation"}),
    ("grpo", "dr_grpo", {"advantage_estimator", "aggregation"}),
    ("rloo", "reinforce_pp", {"advantage_estimator", "whiten_advantages"}),  # RLOO whitened (CPGD Table 1, D4)
])
def test_ablation_pairs_differ_in_exactly_the_named_choice(a, b, fields):
    assert _diff(RunConfig.from_preset(a), RunConfig.from_preset(b)) == fields


@pytest.mark.parametrize("a, b", list(itertools.combinations(PRESETS, 2)))
def test_presets_differ_only_in_fields_they_name(a, b):
    named = (set(PRESETS[a]) | set(PRESETS[b])) - {"paper"}
    assert _diff(RunConfig.from_preset(a), RunConfig.from_preset(b)) <= named


def test_default_config_is_cpgd():
    assert RunConfig().algorithm() == RunConfig.from_preset("cpgd").algorithm()
    cpgd = RunConfig.from_preset("cpgd")
    assert (cpgd.surrogate, cpgd.drift_coef, cpgd.drift_clip, cpgd.eps_low, cpgd.eps_high) == ("cpg", 0.01, 2.0, 0.2, 0.2)
    assert cpgd.advantage_estimator == "grpo" and cpgd.std_eps == 1e-9 and cpgd.kl_coef == 0
    assert cpgd.aggregation == "group-token-mean"  # the paper's Eq. 2 (code: seq-mean-token-mean, D2)


def test_preset_values_match_the_spec():
    assert RunConfig.from_preset("dapo").eps_high == 0.28 and RunConfig.from_preset("dapo").eps_low == 0.2
    assert RunConfig.from_preset("grpo_dual_clip").dual_clip == 3.0
    assert RunConfig.from_preset("grpo_kl").kl_coef == 1e-3 and RunConfig.from_preset("grpo_kl").kl_estimator == "k3"
    gspo = RunConfig.from_preset("gspo")
    assert (gspo.eps_low, gspo.eps_high) == (3e-4, 4e-4)
    assert RunConfig.from_preset("cispo").cispo_cap == 5.0


def test_overrides_apply_and_unknown_fields_raise():
    cfg = RunConfig.from_preset("grpo", eps_high=0.28, lr=3e-6)
    assert cfg.eps_high == 0.28 and cfg.lr == 3e-6 and cfg.surrogate == "ppo_clip"
    with pytest.raises(ConfigError, match="unknown RunConfig field.*clip_eps"):
        RunConfig.from_preset("grpo", clip_eps=0.2)


def test_unknown_preset_lists_allowed():
    with pytest.raises(ConfigError) as err:
        RunConfig.from_preset("ppo")
    message = str(err.value)
    assert "preset" in message and "'ppo'" in message
    assert all(name in message for name in PRESETS)
    with pytest.raises(ConfigError, match="preset"):
        RunConfig(preset="nope")


@pytest.mark.parametrize("field, allowed", [
    ("aggregation", config.AGGREGATIONS),
    ("surrogate", config.SURROGATES),
    ("advantage_estimator", config.ESTIMATORS),
    ("kl_estimator", config.KL_ESTIMATORS),
    ("adv_weight", config.ADV_WEIGHTS),
])
def test_bad_choice_names_field_and_lists_allowed(field, allowed):
    with pytest.raises(ConfigError) as err:
        RunConfig(**{field: "bogus"})
    message = str(err.value)
    assert message.startswith(f"{field}:") and "'bogus'" in message
    assert all(value in message for value in allowed)


@pytest.mark.parametrize("field, value", [
    ("eps_low", 0.0), ("eps_low", -0.1), ("eps_high", 0.0), ("eps_high", -1.0),
    ("std_eps", 0.0), ("drift_clip", 0.0), ("cispo_cap", -1.0), ("drift_coef", -0.01), ("kl_coef", -1.0),
    ("skip_zero_variance", -1), ("skip_zero_variance", 1.5), ("skip_zero_variance", True),
    ("max_verifier_error_frac", -0.1), ("max_verifier_error_frac", 1.5), ("max_verifier_error_frac", float("nan")),
])
def test_bad_numbers_name_the_field(field, value):
    with pytest.raises(ConfigError, match=f"^{field}:"):
        RunConfig(**{field: value})


@pytest.mark.parametrize("eps_low", [1.0, 10.0])
def test_eps_low_at_least_one_is_accepted_as_no_lower_clip(eps_low):
    # peers take any clip range (CS336's GRPO tests use 10); losses.ratio_floor turns it into "no lower clip"
    assert RunConfig(eps_low=eps_low).eps_low == eps_low
    assert RunConfig.from_preset("grpo", eps_low=eps_low, eps_high=10.0).eps_high == 10.0


@pytest.mark.parametrize("estimator", ["grpo", "dr_grpo", "equal", "rloo", "reinforce_pp_baseline"])
def test_group_estimators_need_two_responses(estimator):
    with pytest.raises(ConfigError, match="^group_size:.*>= 2"):
        RunConfig(advantage_estimator=estimator, group_size=1)


def test_group_size_one_ok_without_group_baseline():
    assert RunConfig(advantage_estimator="reinforce_pp", group_size=1).group_size == 1
    with pytest.raises(ConfigError, match="group_size"):
        RunConfig(advantage_estimator="reinforce_pp", group_size=1, adv_weight="clip_filter_like")


def test_dual_clip_must_exceed_one_plus_eps_high():
    with pytest.raises(ConfigError, match="dual_clip"):
        RunConfig.from_preset("grpo", dual_clip=1.1)
    assert RunConfig.from_preset("grpo", dual_clip=1.3).dual_clip == 1.3


def test_filter_bounds_and_overlong_buffer_validated():
    with pytest.raises(ConfigError, match="filter_lower"):
        RunConfig(filter_lower=0.9, filter_upper=0.1)
    with pytest.raises(ConfigError, match="overlong_buffer"):
        RunConfig(overlong_buffer=64, max_len=64)


def test_config_error_is_value_error():
    assert issubclass(ConfigError, ValueError)


@pytest.mark.parametrize("name", ["cpgd", "dapo", "grpo_dual_clip", "gspo"])
def test_round_trip_dict_and_json(name):
    cfg = RunConfig.from_preset(name, lr=2e-6, adam_betas=(0.8, 0.9), run_dir="/tmp/x")
    assert RunConfig.from_dict(cfg.to_dict()) == cfg
    assert RunConfig.from_dict(json.loads(cfg.to_json())) == cfg  # JSON turns the betas tuple into a list
    with pytest.raises(ConfigError, match="unknown"):
        RunConfig.from_dict({**cfg.to_dict(), "typo": 1})


def test_every_field_has_a_docstring():
    docs = config.field_docs()
    assert set(docs) == set(config.field_names())
    assert all(len(doc) > 10 for doc in docs.values())


def test_algorithm_slots_are_preset_fields():
    cfg = RunConfig.from_preset("dapo")
    assert set(cfg.algorithm()) == set(ALGORITHM_FIELDS)
    assert {"surrogate", "advantage_estimator", "aggregation", "drift_coef", "kl_coef"} <= set(ALGORITHM_FIELDS)


def test_train_levels_and_pool_size_choose_the_toy_training_problems():
    from eureka_kit.data.problems import load_problems

    rows = load_problems(RunConfig.from_preset("cpgd", train_levels=[1, 3], train_per_level=7))
    assert [r["level"] for r in rows] == [1] * 7 + [3] * 7
    assert {r["id"].split("-")[1] for r in rows} == {"train"}
    assert len(load_problems(RunConfig())) == 400 * 6  # the default: every level, 400 each
    test_rows = load_problems(RunConfig.from_preset("cpgd", train_levels=(1,)), split="test")
    assert {r["level"] for r in test_rows} == set(range(6))  # evaluation keeps every level
    with pytest.raises(ConfigError, match="train_levels"):
        RunConfig(train_levels=(6,))
    with pytest.raises(ConfigError, match="train_per_level"):
        RunConfig(train_per_level=0)
