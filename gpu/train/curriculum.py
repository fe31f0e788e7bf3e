"""A curriculum over a task's difficulty labels: the loss scores the easy answers first and the harder ones later.

The task folders of gpu.tasks label every answer token with its difficulty, PREFIX<value> ('hop1'..'hop4' for
p-hop and chain, 'len2'..'len16' for parity, 'carry0'.. for addition). With --curriculum=PREFIX and
--curriculum-steps=W, the n difficulty levels v_0 < ... < v_{n-1} present in the train split enter the loss one by
one at equal intervals:

    level v_i is scored from 0-based step  s_i = floor(i W / (n - 1))      (n = 1: from step 0)

so at step 0 only the easiest answers are scored and from step W every level is. Before its step a level's targets
are ignored exactly as --ignore-topics ignores a topic (loss index -1): the model still reads the harder problems,
it is only not yet asked to answer them.

With --curriculum-mastery=a a level also enters earlier, once the answers scored so far are mastered: when, over
the last WINDOW training steps, a share >= a of the scored answer tokens of the entered levels (those whose problem
starts inside the window) were predicted right (argmax of the training batches' logits, before the update), the
next level enters at the following step and the window starts afresh. The schedule stays the latest a level
enters (W = max_steps: a curriculum by mastery alone). The mastery state (levels entered, the window) is saved in
checkpoints, so a resumed run continues it exactly.

Evaluation always scores every level, so the validation loss of a run with a curriculum measures the whole task
from the first evaluation on.

Why: a preset model trained on 1-4 hop p-hop at once stays near chance even on 1 hop (30-36%), while the same
model trained on 1-hop problems alone gets 54-82% of them (docs/results.md, sections 7 and 8). A curriculum with
fixed 1500-step levels did not help there (section 8): the easy level has to be learned before the next enters.
"""
from __future__ import annotations

import re
from collections import deque

import numpy as np
import torch

from ..config import TrainConfig
from .data import mask_cut_documents

WINDOW = 50  # training steps over which --curriculum-mastery measures the accuracy of the scored answers
CHUNK = 1 << 23  # topic labels read at a time when looking for the levels of a split


class Curriculum:
    """The ids of the topics the loss ignores at each step: --ignore-topics' plus the levels not yet entered."""

    def __init__(self, tc: TrainConfig, data: dict):
        self.always, self.eot = data["ignore_ids"], int(data["meta"].get("eot_id", 0))
        self.steps, self.mastery = tc.curriculum_steps, tc.curriculum_mastery
        self.levels: list[tuple[int, int]] = []  # (value, topic id), easiest first
        self.mastered = 1  # levels entered by mastery so far (the schedule may be ahead of it)
        self.window: deque = deque(maxlen=WINDOW)  # (right, scored) answer tokens of the last steps
        if not tc.curriculum:
            return
        topics, train_topics = data["topics"], data["train_topics"]
        if not topics or train_topics is None:
            raise ValueError(f"--curriculum={tc.curriculum!r}: the data folder has no topic labels; a curriculum "
                             f"needs a task folder made by `python -m gpu.tasks make`")
        pattern = re.compile(rf"{re.escape(tc.curriculum)}(\d+)")
        labelled = {i: int(m.group(1)) for i, name in enumerate(topics) if (m := pattern.fullmatch(name))}
        counts = sum(np.bincount(np.asarray(train_topics[i:i + CHUNK]), minlength=len(topics))
                     for i in range(0, len(train_topics), CHUNK))  # in chunks: memory bounded on a large split
        present = np.flatnonzero(counts)
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

    def entered(self, step: int) -> int:
        """How many levels (easiest first) are scored at `step`: by the schedule, or by mastery if that is ahead."""
        by_schedule = sum(self.entry_step(i) <= step for i in range(len(self.levels)))
        return max(by_schedule, self.mastered) if self.mastery else by_schedule

    def level(self, step: int) -> int | None:
        """The hardest level value scored at `step` (None without a curriculum)."""
        return self.levels[self.entered(step) - 1][0] if self.levels else None

    def ignore_ids(self, step: int) -> np.ndarray:
        """Topic ids whose targets the loss skips at `step`. (k,) int64"""
        waiting = [t for _, t in self.levels[self.entered(step):]]
        if not waiting:
            return self.always
        return np.union1d(self.always, np.array(waiting, dtype=np.int64))

    def answers_right(self, logits: torch.Tensor, x, y, topic, step: int) -> tuple[int, int]:
        """(right, scored): the answer tokens of the levels scored at `step` in a batch whose document starts inside
        the window (an answer whose prompt was cut off cannot be known: gpu.train.data.mask_cut_documents), and how
        many of them the argmax of `logits` (B, T, V) predicts. (0, 0) unless --curriculum-mastery is on."""
        if not self.mastery:
            return 0, 0
        ids = [t for _, t in self.levels[:self.entered(step)]]
        scored = mask_cut_documents(x, y, self.eot) >= 0
        keep = torch.from_numpy(np.isin(topic, ids) & scored).to(logits.device)  # (B, T)
        target = torch.from_numpy(y).to(logits.device)
        right = (logits.detach().argmax(-1) == target) & keep
        return int(right.sum()), int(keep.sum())

    def after_step(self, step: int, right: float, scored: float) -> dict:
        """Once `step` is trained, with its answer counts (answers_right, over every micro-batch and process):
        returns what its train record adds (the hardest scored level; the mastery window's accuracy, this step
        included), then, once the window is full and accurate enough, lets the next level enter from step + 1 and
        restarts the window."""
        if not self.levels:
            return {}
        record = dict(curriculum_level=self.level(step))
        if not self.mastery or self.entered(step) == len(self.levels):
            return record
        self.window.append((right, scored))
        right_sum, total = (sum(col) for col in zip(*self.window))
        if total:
            record["curriculum_accuracy"] = right_sum / total
        if len(self.window) == WINDOW and total and right_sum / total >= self.mastery:
            self.mastered = self.entered(step) + 1
            self.window.clear()
        return record

    def state(self) -> dict:
        """What a checkpoint keeps to resume the mastery curriculum exactly."""
        return dict(mastered=self.mastered, window=[list(w) for w in self.window])

    def restore(self, state: dict | None) -> None:
        """Continue from a checkpoint's state (None: a fresh run, or a checkpoint written without one)."""
        if state:
            self.mastered = int(state["mastered"])
            self.window = deque((tuple(w) for w in state["window"]), maxlen=WINDOW)
