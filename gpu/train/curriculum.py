"""A curriculum over a task's difficulty labels: the loss scores the easy answers first and the harder ones later.

The task folders of gpu.tasks label every answer token with its difficulty, PREFIX<value> ('hop1'..'hop4' for
p-hop and chain, 'len2'..'len16' for parity, 'carry0'.. for addition). With --curriculum=PREFIX and
--curriculum-steps=W, the n difficulty levels v_0 < ... < v_{n-1} present in the train split enter the loss one by
one at equal intervals:

    level v_i is scored from 0-based step  s_i = floor(i W / (n - 1))      (n = 1: from step 0)

so at step 0 only the easiest answers are scored and from step W every level is. Before its step a level's targets
are ignored exactly as --ignore-topics ignores a topic (loss index -1): the model still reads the harder problems,
it is only not yet asked to answer them. Evaluation always scores every level, so the validation loss of a run
with a curriculum measures the whole task from the first evaluation on. Levels are functions of the step alone, so
a resumed run continues the same curriculum.

Why: a preset model trained on 1-4 hop p-hop at once stays near chance even on 1 hop, while the same model
trained on 1-hop problems alone learns them (docs/results.md, section 7).
"""
from __future__ import annotations

import re

import numpy as np

from ..config import TrainConfig


class Curriculum:
    """The ids of the topics the loss ignores at each step: --ignore-topics' plus the levels not yet entered."""

    def __init__(self, tc: TrainConfig, data: dict):
        self.always = data["ignore_ids"]
        self.steps = tc.curriculum_steps
        self.levels: list[tuple[int, int]] = []  # (value, topic id), easiest first
        if not tc.curriculum:
            return
        topics, train_topics = data["topics"], data["train_topics"]
        if not topics or train_topics is None:
            raise ValueError(f"--curriculum={tc.curriculum!r}: the data folder has no topic labels; a curriculum "
                             f"needs a task folder made by `python -m gpu.tasks make`")
        pattern = re.compile(rf"{re.escape(tc.curriculum)}(\d+)")
        labelled = {i: int(m.group(1)) for i, name in enumerate(topics) if (m := pattern.fullmatch(name))}
        present = np.flatnonzero(np.bincount(np.asarray(train_topics), minlength=len(topics)))
        self.levels = sorted((labelled[i], i) for i in present if i in labelled)
        if not self.levels:
            prefixes = sorted({re.sub(r"\d+$", "", n) for n in topics if re.search(r"\d$", n)})
            raise ValueError(f"--curriculum={tc.curriculum!r}: no topic of the train split is named "
                             f"{tc.curriculum}<number>; this folder's difficulty labels are {prefixes or 'none'} "
                             f"(topics {topics})")

    def entry_step(self, i: int) -> int:
        """The 0-based step from which level i (0 = easiest) is scored."""
        n = len(self.levels)
        return 0 if n == 1 else i * self.steps // (n - 1)

    def level(self, step: int) -> int | None:
        """The hardest level value scored at `step` (None without a curriculum)."""
        if not self.levels:
            return None
        return max(v for i, (v, _) in enumerate(self.levels) if self.entry_step(i) <= step)

    def ignore_ids(self, step: int) -> np.ndarray:
        """Topic ids whose targets the loss skips at `step`. (k,) int64"""
        waiting = [t for i, (_, t) in enumerate(self.levels) if self.entry_step(i) > step]
        if not waiting:
            return self.always
        return np.union1d(self.always, np.array(waiting, dtype=np.int64))

    def record(self, step: int) -> dict:
        """What a train record of `step` adds: the hardest scored level, while the curriculum runs."""
        return {} if not self.levels else dict(curriculum_level=self.level(step))
