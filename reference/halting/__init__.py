"""Halting rules, one file each, and the registry that maps `LoopConfig.halt` to its rule.

Adding a rule: write reference/halting/NAME.py (a `HaltingRule` subclass: its decision, resolve, backward, loss
weights), its torch twin gpu/halting/NAME.py, add one line to RULES here and one to gpu/halting/__init__.py,
and the equivalence suite picks it up (docs/architecture.md). The pure functions `act`, `pondernet`, `converge`,
`fixed` stay public: they are the equations, and the tests probe them directly.
"""
from __future__ import annotations

from .act import ACT, act, act_backward
from .base import NORM_FLOOR, Halting, HaltingRule, relative_change
from .converge import Converge, converge
from .exit_gate import ExitGate, exit_gate
from .fixed import Fixed, fixed
from .pondernet import PonderNet, geometric_prior, pondernet, pondernet_backward

RULES: dict[str, HaltingRule] = {
    "fixed": Fixed(),
    "act": ACT(),
    "pondernet": PonderNet(),
    "converge": Converge(),
    "exit_gate": ExitGate(),
}


def get_rule(name: str) -> HaltingRule:
    """The rule registered under `name` (LoopConfig.halt); ValueError listing the known ones."""
    try:
        return RULES[name]
    except KeyError:
        raise ValueError(f"unknown halting rule {name!r}; choose one of {sorted(RULES)}") from None


__all__ = ["RULES", "get_rule", "Halting", "HaltingRule", "NORM_FLOOR", "relative_change", "act", "act_backward",
           "pondernet", "pondernet_backward", "geometric_prior", "converge", "fixed", "exit_gate"]
