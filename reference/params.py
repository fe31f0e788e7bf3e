"""Parameters declared with their initialisation: every component says what it stores and how it starts, so a new
component cannot silently inherit another's init by a name pattern.

`ParamSpec(shape, init, value)`: init "normal" draws N(0, value^2); "constant" fills `value`; "eye_normal" draws
N(0, value^2) and adds the identity to the first D columns (the concat injection's [I 0] start).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ParamSpec:
    shape: tuple
    init: str = "normal"  # normal | constant | eye_normal
    value: float = 0.0    # std for normal / eye_normal, the fill value for constant

    def draw(self, rng: np.random.Generator) -> np.ndarray:
        """The initial value, in float64; only the random inits consume `rng` (so the draw order is the spec order)."""
        if self.init == "constant":
            return np.full(self.shape, float(self.value))
        w = rng.normal(0.0, self.value, size=self.shape)
        if self.init == "eye_normal":
            w[:, : self.shape[0]] += np.eye(self.shape[0])
        return w


def normal(*shape, std: float) -> ParamSpec:
    return ParamSpec(tuple(shape), "normal", std)


def constant(*shape, value: float) -> ParamSpec:
    return ParamSpec(tuple(shape), "constant", value)


def residual_std(cfg) -> float:
    """init_std / sqrt(2 * effective depth) for the output projections that write into the residual stream
    (GPT-2, Radford et al. 2019): depth counts the blocks of the unrolled model at max_loops."""
    depth = cfg.n_prelude + cfg.n_layer * cfg.max_loops + cfg.n_coda
    return cfg.init_std / math.sqrt(2 * depth)


def add_grad(grads: dict, name: str, g) -> None:
    """Accumulate a gradient: a weight used at several loop steps sums its gradients (weight tying)."""
    if g is not None:
        grads[name] = grads[name] + g if name in grads else g
