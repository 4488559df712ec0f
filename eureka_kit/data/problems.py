"""Training problems: loading a config's data set and the seeded, epoch-shuffled stream the loops draw from."""

from __future__ import annotations

import random

from eureka_kit.config import RunConfig


class ProblemStream:
    """Epoch-shuffled draws from `problems`, seeded. With `skip_after_zero_variance` = N > 0, a problem marked
    by `skip()` (its last group had zero variance) is passed over at its next N draws (GRESO-style); when every
    problem is being skipped, the passes run all the counts down together until one comes back."""

    def __init__(self, problems: list[dict], seed: int, skip_after_zero_variance: int = 0):
        if not problems:
            raise ValueError("problems: the training set is empty")
        self.rng, self.epoch, self.skip_visits = random.Random(seed), 0, skip_after_zero_variance
        self.switch(problems)

    def switch(self, problems: list[dict]) -> None:
        """Draw from `problems` from now on (a new stage's data set), starting with a fresh shuffle."""
        self.order, self.cursor = [], 0
        self.skips: dict[int, int] = {}  # pool index -> draws still to pass over
        self.skipped = 0  # draws passed over so far (a counter for metrics)
        self.reload(problems)

    def reload(self, problems: list[dict]) -> None:
        """The same data set as freshly loaded objects (a stage that keeps its data): keep position and skips."""
        self.problems, self._index = problems, {id(p): i for i, p in enumerate(problems)}

    def index_of(self, problem: dict) -> int:
        return self._index[id(problem)]

    def skip(self, indices: list[int]) -> None:
        """Pass over these pool indices at their next `skip_after_zero_variance` draws."""
        if self.skip_visits:
            self.skips.update(dict.fromkeys(indices, self.skip_visits))

    def take(self, n: int) -> list[dict]:
        out = []
        while len(out) < n:
            if self.cursor >= len(self.order):
                self.order = list(range(len(self.problems)))
                self.rng.shuffle(self.order)
                self.cursor, self.epoch = 0, self.epoch + 1
            i = self.order[self.cursor]
            self.cursor += 1
            if self.skips.get(i):  # finite counts: every pass over the pool brings each one closer to 0
                self.skips[i] -= 1
                self.skipped += 1
                continue
            out.append(self.problems[i])
        return out


def load_problems(cfg: RunConfig, split: str = "train", subject: str = "math") -> list[dict]:
    if cfg.task == "toyworld":
        from eureka_kit.data import toyworld

        if split == "train":
            return toyworld.load(split, subject, seed=cfg.seed, multimodal=cfg.multimodal,
                                 n_per_level=cfg.train_per_level, levels=cfg.train_levels or None)
        return toyworld.load(split, subject, seed=cfg.seed, multimodal=cfg.multimodal)
    from eureka_kit.data import mmk12

    return mmk12.load(cfg.data_path, split=split, subject=None if split == "train" else subject).rows

