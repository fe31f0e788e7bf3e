"""Retrofit a dense model into a looped one: prelude, core and coda blocks taken from its layers.

The recipe of "retrofitting recurrence" (McLeish et al. 2025: keep the first layers as the prelude, loop a slice of
the middle ones, keep the last layers as the coda, drop the rest) and of Ouro's upcycling. The loop's new parameters
start where one loop step is the dense computation:
    step scale gamma = 1          s_1 = s_0 + 1 * (F(x_1) - x_1) = F(s_0)
    injection none, or concat     x_1 = W_inj [s_0; e] = s_0 with W_inj = [I 0] exactly (no noise)
and at max_loops = 1 every halting rule puts weight 1 on step 1, so with the core layers consecutive and nothing
dropped the retrofitted model at one loop computes the dense model's logits (tests/test_convert.py). The halting
unit (act, pondernet, exit_gate) starts from the config's own init; more loops start near the dense function only
as far as the core's layers are close to idempotent, which is what continued training (`gpu.train --init-from`)
then teaches.
"""
from __future__ import annotations

import numpy as np

from reference.config import LoopConfig
from reference.model import check_params, init_params

from .hf import block_names, dense_blockers

LOOP_FIELDS = ("max_loops", "min_loops", "halt", "loop_scope", "input_injection", "act_eps", "halt_bias_init",
               "halt_penalty", "pondernet_prior", "pondernet_beta", "converge_tol", "exit_threshold", "exit_entropy",
               "backprop_loops", "block_size", "init_std")  # what a retrofit may set besides the layer split


def parse_layers(spec: str, n_layers: int, where: str, start: int = 0) -> list[int]:
    """Dense layer indices from a command-line spec: 'i:j' (a Python slice of 0..n_layers-1, negative ends allowed,
    '' = 0 layers) or a count 'n': the first n (prelude), the n after `start` (core) or the last n (coda)."""
    spec = str(spec).strip()
    try:
        if ":" in spec:
            lo, hi = (int(p) if p.strip() else None for p in spec.split(":"))
            if any(end is not None and not -n_layers <= end <= n_layers for end in (lo, hi)):
                raise ValueError
            layers = list(range(n_layers))[slice(lo, hi)]
        else:
            n = int(spec or 0)
            if n < 0:
                raise ValueError
            layers = {"prelude": range(n), "core": range(start, start + n),
                      "coda": range(n_layers - n, n_layers)}[where]
            layers = list(layers)
    except ValueError:
        raise ValueError(f"--{where} {spec!r}: expected a count N or a slice I:J of the {n_layers} dense "
                         f"layers") from None
    if any(not 0 <= i < n_layers for i in layers) or (where == "core" and not layers):
        raise ValueError(f"--{where} {spec!r} selects layers {layers} of a model with {n_layers} layers (0.."
                         f"{n_layers - 1}); the core needs at least one")
    return layers


def retrofit(params: dict, cfg: LoopConfig, prelude: list[int], core: list[int], coda: list[int],
             max_loops: int = 4, halt: str = "fixed", seed: int = 0, **loop_fields) -> tuple[dict, LoopConfig]:
    """(params, config) of the looped model whose prelude, core and coda blocks are the dense layers at those
    indices (of block_names(cfg): a dense model's blocks in order), started so that one loop step is the dense
    computation (see the module docstring). loop_fields: LOOP_FIELDS (loop_scope defaults to 'stack', the whole
    core loops). ValueError for a source that is not dense, an 'add' injection, or fields that change the blocks."""
    problems = dense_blockers(params, cfg)
    if problems:
        raise ValueError("retrofit needs a dense model (each block once, nothing added): " + "; ".join(problems))
    bad = sorted(set(loop_fields) - set(LOOP_FIELDS))
    if bad:
        raise ValueError(f"retrofit cannot change {bad}: the blocks keep the dense model's architecture; it sets "
                         f"only {list(LOOP_FIELDS)}")
    injection = loop_fields.setdefault("input_injection", "none")
    if injection == "add":
        raise ValueError("input_injection='add' feeds s + e = 2 e into the first step, so one loop cannot reproduce "
                         "the dense model: use 'none' or 'concat' (started at [I 0])")
    loop_fields.setdefault("loop_scope", "stack")
    loop_fields.setdefault("min_loops", 1)
    new_cfg = cfg.replace(n_prelude=len(prelude), n_layer=len(core), n_coda=len(coda), max_loops=max_loops,
                          halt=halt, step_scale_init=1.0, **loop_fields)
    names = block_names(cfg)
    new = init_params(new_cfg, seed, "float32")  # the halting unit's init; everything else is overwritten
    mapping = list(zip(block_names(new_cfg), [names[i] for i in prelude + core + coda]))
    for ours, theirs in mapping:
        for name, value in params.items():
            if name.startswith(theirs + "."):
                new[ours + name[len(theirs):]] = np.array(value, dtype=np.float32)
    for name in ("embed.weight", "pos.weight", "norm_f.weight", "norm_f.bias", "lm_head.weight"):
        if name in params:
            new[name] = np.array(params[name], dtype=np.float32)
    D = new_cfg.d_model
    for g in range(new_cfg.n_groups):
        new[f"loop.{g}.step_scale"] = np.ones(D, dtype=np.float32)
        if injection == "concat":
            new[f"loop.{g}.inject.weight"] = np.eye(D, 2 * D, dtype=np.float32)  # [I 0]: x_1 = s_0
    check_params(new, new_cfg)
    return new, new_cfg


def recipe(prelude, core, coda, cfg: LoopConfig) -> dict:
    """What config.json records about a retrofit: which dense layer each new block came from."""
    return dict(kind="retrofit", prelude=prelude, core=core, coda=coda, max_loops=cfg.max_loops, halt=cfg.halt,
                loop_scope=cfg.loop_scope, input_injection=cfg.input_injection,
                step_scale="1 (one loop step = the dense block)")
