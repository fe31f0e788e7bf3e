"""Executors: how a loop group's steps are computed, apart from what they compute (the semantics of
reference/loop.py). Every executor returns the per-step states, halting signals and relative changes, and the
loop group resolves them with its halting rule. Each is tested equal to `masked`, the reference semantics."""
from __future__ import annotations

from .auto import run_auto
from .compact import run_compact
from .masked import run_masked

EXECUTORS = {"auto": run_auto, "masked": run_masked, "compact": run_compact}  # auto: the default (auto.py)


def get_executor(name: str):
    try:
        return EXECUTORS[name]
    except KeyError:
        raise ValueError(f"unknown executor {name!r}; choose one of {sorted(EXECUTORS)}") from None
