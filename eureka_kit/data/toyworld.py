"""The toy world: seeded arithmetic problems in MMK12's shape, sized for a tiny char-level model.

Rows have MMK12's columns `id, question, answer, image, subject` plus `level` (difficulty) and `solution`
(a worked `<think>…</think><answer>…</answer>` string, used only for the SFT warm start).

* Difficulty ladder (`LEVELS`): level 0 (one-digit sums) is usually solved by the base policy, the top
  level (3-digit multi-operation) never is; the levels between give the partially-solved problems RL lifts.
* Subjects: `math` (train and test) says "What is 12+34?"; `physics`, `chemistry`, `biology` (test only)
  ask the *same* arithmetic in other words (units, molecules, cells), as out-of-distribution tests.
* Multiple choice (MMK12 test style): options A-D inline in the question, answer = a letter.
* Multimodal: the second operand is drawn in a Pillow image and the question says `x`; text-only is the
  fast default (`image` is None).
Train and test never share an expression: an expression's split is fixed by a stable hash of its text.
Everything is a pure function of (seed, split, subject, options).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from dataclasses import dataclass

from PIL import Image, ImageDraw

from eureka_kit.config import TOY_WORLD_LEVELS

SUBJECTS = ("math", "physics", "chemistry", "biology")
OOD_SUBJECTS = SUBJECTS[1:]
TEST_FRACTION = 10  # 1 expression in 10 is reserved for test splits


@dataclass(frozen=True)
class Level:
    """One rung of the ladder: `operands(rng)` gives the numbers, `ops` the operators between them."""

    name: str
    operands: Callable[[random.Random], tuple[int, ...]]
    ops: tuple[str, ...]


def _nums(*ranges: tuple[int, int]) -> Callable[[random.Random], tuple[int, ...]]:
    return lambda rng: tuple(rng.randint(lo, hi) for lo, hi in ranges)


LEVELS: tuple[Level, ...] = (
    Level("1-digit + 1-digit", _nums((1, 9), (1, 9)), ("+",)),
    Level("2-digit + 1-digit", _nums((10, 99), (1, 9)), ("+",)),
    Level("2-digit + 2-digit", _nums((10, 99), (10, 99)), ("+",)),
    Level("2-digit - 2-digit", _nums((50, 99), (10, 49)), ("-",)),
    Level("2-digit * 1-digit", _nums((10, 99), (2, 9)), ("*",)),
    Level("3-digit * 1-digit + 2-digit", _nums((100, 999), (2, 9), (10, 99)), ("*", "+")),
)
if len(LEVELS) != TOY_WORLD_LEVELS:  # RunConfig validates train_levels against that count
    raise ImportError(f"toyworld: {len(LEVELS)} levels but config.TOY_WORLD_LEVELS = {TOY_WORLD_LEVELS}")

# Subject wordings: `{e}` is the expression. Kept short (<= ~40 chars) for the char-level model.
TEMPLATES: dict[str, tuple[str, ...]] = {
    # several math wordings, so the model learns to find the expression (what lets some skill transfer)
    "math": ("What is {e}?", "Compute {e}.", "Find {e}."),
    # Out of domain, one near and one far wording per subject. With the far ones alone the base policy scored
    # 2-5% (too low for any transfer to show); the near ones put it at ~20% overall (reports/LOG.md).
    "physics": ("Mass {e}?", "Mass {e} kg. Total kg?"),
    "chemistry": ("Atoms {e}?", "Atoms: {e}. How many?"),
    "biology": ("Cells {e}?", "Cells: {e}. How many cells?"),
}


def _evaluate(nums: tuple[int, ...], ops: tuple[str, ...]) -> tuple[str, int, str]:
    """(expression, value, worked steps) evaluated left to right, one step per operator."""
    expr, value, steps = str(nums[0]), nums[0], []
    for op, b in zip(ops, nums[1:], strict=True):
        new = value + b if op == "+" else value - b if op == "-" else value * b
        steps.append(f"{value}{op}{b}={new}")
        expr, value = f"{expr}{op}{b}", new
    return expr, value, ",".join(steps)


def _in_test(expr: str) -> bool:
    # Stable across processes (Python's hash() is salted).
    return int(hashlib.sha256(expr.encode()).hexdigest(), 16) % TEST_FRACTION == 0


def _options(rng: random.Random, value: int) -> tuple[list[int], int]:
    """Four distinct options containing `value` (near misses, as a careless adder makes); index of it."""
    pool = [value + d for d in (-10, -2, -1, 1, 2, 10) if value + d >= 0]
    opts = rng.sample(pool, 3) + [value]
    rng.shuffle(opts)
    return opts, opts.index(value)


def render_number(value: int | str, size: int = 56) -> Image.Image:
    """White RGB square with `value` in black; 56 px is the toy VL processor's minimum (4 image tokens)."""
    img = Image.new("RGB", (size, size), "white")
    ImageDraw.Draw(img).text((4, size // 2 - 6), str(value), fill="black")
    return img


def make_problem(rng: random.Random, level: int, subject: str = "math", split: str = "train", *,
                 multiple_choice: bool = False, multimodal: bool = False, index: int = 0) -> dict:
    """One problem of `level` in `subject`, drawn from the train or test part of the expression space."""
    spec = LEVELS[level]
    want_test = split == "test"
    while True:  # rejection-sample into this split's half of the hash partition
        nums = spec.operands(rng)
        expr, value, steps = _evaluate(nums, spec.ops)
        if _in_test(expr) == want_test:
            break
    image = None
    shown = expr
    if multimodal:  # the second operand lives only in the image
        image = render_number(nums[1])
        shown = expr.replace(f"{spec.ops[0]}{nums[1]}", f"{spec.ops[0]}x", 1)
    question = rng.choice(TEMPLATES[subject]).format(e=shown)
    if multimodal:
        question += " x:image"
    answer = str(value)
    if multiple_choice:
        opts, k = _options(rng, value)
        question += " " + " ".join(f"{'ABCD'[i]}.{o}" for i, o in enumerate(opts))
        answer = "ABCD"[k]
    think = steps if not multimodal else f"x={nums[1]},{steps}"
    return dict(id=f"toy-{split}-{subject}-L{level}-{index}", question=question, answer=answer, image=image,
                subject=subject, level=level, solution=f"<think>{think}</think><answer>{answer}</answer>")


def generate(split: str = "train", subject: str = "math", n_per_level: int = 40, *, seed: int = 0,
             levels: tuple[int, ...] | None = None, multiple_choice: bool = False,
             multimodal: bool = False) -> list[dict]:
    """`n_per_level` problems for each level, ordered by level; a pure function of its arguments.

    Args:
        split: "train" or "test" (disjoint expressions). OOD subjects are test-only by convention but a
            train split can be generated (e.g. for an SFT-on-OOD control).
        subject: one of SUBJECTS.
        levels: which rungs of LEVELS (default all).
    Returns:
        list of row dicts (id, question, answer, image, subject, level, solution).
    """
    if split not in ("train", "test"):
        raise ValueError(f"split: expected 'train' or 'test', got {split!r}")
    if subject not in SUBJECTS:
        raise ValueError(f"subject: expected one of {SUBJECTS}, got {subject!r}")
    levels = tuple(range(len(LEVELS))) if levels is None else levels
    key = f"{seed}/{split}/{subject}/{multiple_choice}/{multimodal}"
    rng = random.Random(int(hashlib.sha256(key.encode()).hexdigest(), 16))
    return [make_problem(rng, lv, subject, split, multiple_choice=multiple_choice, multimodal=multimodal,
                         index=i)
            for lv in levels for i in range(n_per_level)]


def load(split: str = "train", subject: str = "math", *, seed: int = 0, **kwargs) -> list[dict]:
    """Task interface shared with `mmk12.load`: rows for (split, subject)."""
    default_n = 400 if split == "train" else 32
    return generate(split, subject, kwargs.pop("n_per_level", default_n), seed=seed, **kwargs)
