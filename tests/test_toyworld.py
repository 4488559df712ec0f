"""Toy world generator: shape, determinism, disjoint splits, subjects, multiple choice, images."""

import pytest
from PIL import Image

from eureka_kit.data import toyworld as tw
from eureka_kit.data.prompts import SYSTEM_PROMPTS, build_messages

COLUMNS = {"id", "question", "answer", "image", "subject", "level", "solution"}


def test_rows_have_mmk12_shape_and_correct_answers():
    rows = tw.generate("test", "math", 5, seed=3)
    assert len(rows) == 5 * len(tw.LEVELS)
    for r in rows:
        assert set(r) == COLUMNS and r["image"] is None and r["subject"] == "math"
        expr = r["solution"].split("</think>")[0].split(",")[-1].split("=")[0].removeprefix("<think>")
        assert r["answer"] == r["solution"].split("=")[-1].split("<")[0]
        assert len(r["question"]) <= 40, r["question"]
        assert expr  # worked steps present
    assert len({r["id"] for r in rows}) == len(rows)


def test_answers_are_the_arithmetic():
    for r in tw.generate("train", "math", 20, seed=0, levels=(2, 3, 4)):
        expr = r["question"].removeprefix("What is ").removeprefix("Compute ").removeprefix("Find ")[:-1]
        assert int(r["answer"]) == eval(expr)


def test_deterministic_and_seed_dependent():
    a = tw.generate("train", "math", 10, seed=1)
    assert a == tw.generate("train", "math", 10, seed=1)
    assert a != tw.generate("train", "math", 10, seed=2)


def test_train_and_test_expressions_disjoint():
    def exprs(split):
        return {r["solution"] for r in tw.generate(split, "math", 200, seed=0, levels=(1, 2, 3, 4, 5))}
    assert not exprs("train") & exprs("test")


@pytest.mark.parametrize("subject", tw.OOD_SUBJECTS)
def test_ood_subjects_reuse_the_arithmetic_in_other_words(subject):
    ood = tw.generate("test", subject, 10, seed=0)
    assert all(r["subject"] == subject and not r["question"].startswith(("What is", "Compute", "Find"))
               for r in ood)
    assert all(len(r["question"]) <= 40 for r in ood)


def test_multiple_choice_letter_answers():
    rows = tw.generate("test", "math", 10, seed=0, multiple_choice=True)
    for r in rows:
        assert r["answer"] in "ABCD"
        opts = dict(tok.split(".", 1) for tok in r["question"].split()[-4:])
        assert list(opts) == list("ABCD") and len(set(opts.values())) == 4
        assert opts[r["answer"]] == r["solution"].split("=")[-1].split("<")[0]
    assert len({r["answer"] for r in rows}) > 1  # the correct letter varies


def test_multimodal_image_carries_the_second_operand():
    rows = tw.generate("test", "math", 3, seed=0, multimodal=True)
    for r in rows:
        assert isinstance(r["image"], Image.Image) and r["image"].size == (56, 56)
        assert "x" in r["question"] and r["solution"].startswith("<think>x=")
        assert r["image"].convert("L").getextrema()[0] < 128  # something is drawn


def test_build_messages_templates():
    row = tw.generate("test", "math", 1, seed=0, multimodal=True)[0]
    msgs = build_messages(row, "cpgd_7b")
    assert msgs[0]["role"] == "system" and msgs[0]["content"][0]["text"] == SYSTEM_PROMPTS["cpgd_7b"]
    assert [c["type"] for c in msgs[1]["content"]] == ["image", "text"]
    assert len(build_messages({"question": "q"}, "none")) == 1
    assert "Th answer should be enclosed" in SYSTEM_PROMPTS["mmeureka_32b"]
    assert SYSTEM_PROMPTS["cpgd_7b"].startswith("Solve the question. The user asks a question, and you solves it.")
    with pytest.raises(ValueError):
        build_messages(row, "nope")
