"""Step-form solutions: conversion of toy-world worked solutions and the step parser."""

import pytest

from eureka_kit.data import toyworld
from eureka_kit.prm.steps import ParsedSolution, format_steps, parse_steps, solution_steps, to_step_solution


def test_parse_ordered_steps_and_answer():
    p = parse_steps("<step>1+2=3</step>\n<step> 3*2=6 </step><answer> 6 </answer>")
    assert p == ParsedSolution(("1+2=3", "3*2=6"), "6")
    assert p.rollout == ("1+2=3", "3*2=6", "6")


@pytest.mark.parametrize("text,steps,answer", [
    ("", (), None),
    ("garbage without tags", (), None),
    ("<step>a</step><step>b", ("a",), None),                      # unclosed step
    ("<step>a</step><answer>7", ("a",), None),                    # unclosed answer
    ("<answer>5</answer>", (), "5"),                               # answer only
    ("<step></step><step>  </step><step>x</step>", ("x",), None),  # empty steps dropped
    ("<step>a</step><answer>1</answer><step>b</step><answer>2</answer>", ("a",), "1"),  # first answer ends it
    ("<step>multi\nline</step><answer>3</answer>", ("multi\nline",), "3"),
    ("<think>1+1=2</think><answer>2</answer>", (), "2"),
    ("<step>a<step>b</step>", ("a<step>b",), None),                # nested open tag: lazy match, no crash
])
def test_parse_malformed(text, steps, answer):
    assert parse_steps(text) == ParsedSolution(steps, answer)


def test_parse_non_string():
    assert parse_steps(None) == ParsedSolution((), None)


def test_format_roundtrip():
    text = format_steps(["12+7=19", "19*2=38"], "38")
    assert text == "<step>12+7=19</step><step>19*2=38</step><answer>38</answer>"
    assert parse_steps(text) == ParsedSolution(("12+7=19", "19*2=38"), "38")


def test_toy_solutions_to_steps_every_level():
    for level in range(len(toyworld.LEVELS)):
        for p in toyworld.generate("train", "math", 5, levels=(level,)):
            parsed = parse_steps(to_step_solution(p))
            assert parsed.answer == p["answer"]
            assert len(parsed.steps) == len(toyworld.LEVELS[level].ops)  # one step per operation
            fine = parse_steps(to_step_solution(p, fine=True))
            assert fine.answer == p["answer"] and len(fine.steps) >= len(parsed.steps)
            for s in fine.steps:  # every step is a true equation
                lhs, rhs = s.split("=")
                assert eval(lhs) == int(rhs)  # noqa: S307 - digits and + - * only
    top = toyworld.generate("train", "math", 3, levels=(5,))
    assert all(len(parse_steps(to_step_solution(p)).steps) == 2 for p in top)


def test_fine_steps_hand_example():
    p = dict(id="x", solution="<think>396*7=2772,2772+49=2821</think><answer>2821</answer>")
    assert solution_steps(p) == (["396*7=2772", "2772+49=2821"], "2821")
    assert solution_steps(p, fine=True) == (
        ["300*7=2100", "90*7=630", "6*7=42", "2100+630+42=2772", "2772+49=2821"], "2821")
    assert solution_steps(dict(solution="<think>40*7=280</think><answer>280</answer>"), fine=True)[0] == ["40*7=280"]


def test_multimodal_reading_is_a_step():
    p = toyworld.generate("train", "math", 1, levels=(2,), multimodal=True)[0]
    steps, answer = solution_steps(p)
    assert steps[0].startswith("x=") and len(steps) == 2 and answer == p["answer"]


def test_unworked_solution_raises():
    with pytest.raises(ValueError, match="solution"):
        solution_steps(dict(id="q", solution="just 5"))
