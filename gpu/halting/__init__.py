"""Torch twins of the halting rules (reference/halting/), one file each, and their registry.

Each torch rule subclasses its reference rule: the config-level parts (parameters, loss weights, FLOPs, the
threshold field) are the reference's own, and the torch file overrides only the computations (the online
decision and the resolve, autograd giving the backward). Adding a rule: one file here, one line below.
"""
from __future__ import annotations

from .act import ACT, act, sequential_cumsum
from .base import Halting, HaltUnit, relative_change
from .converge import Converge, converge
from .exit_gate import ExitGate, exit_gate
from .fixed import Fixed, fixed
from .pondernet import PonderNet, geometric_prior, pondernet, pondernet_p

RULES = {
    "fixed": Fixed(),
    "act": ACT(),
    "pondernet": PonderNet(),
    "converge": Converge(),
    "exit_gate": ExitGate(),
}


def get_rule(name: str):
    """The torch rule registered under `name` (LoopConfig.halt); ValueError listing the known ones."""
    try:
        return RULES[name]
    except KeyError:
        raise ValueError(f"unknown halting rule {name!r}; choose one of {sorted(RULES)}") from None


__all__ = ["RULES", "get_rule", "Halting", "HaltUnit", "relative_change", "act", "sequential_cumsum", "pondernet",
           "pondernet_p", "geometric_prior", "converge", "fixed", "exit_gate"]
