"""Small models for tests, with halting made non-trivial (N varies across tokens) and kept away from flips."""
import numpy as np

import reference as R
from gradcheck import HALT_MARGIN


def small_config(**overrides) -> R.LoopConfig:
    """A model small enough for finite differences; larger init so halting signals spread out."""
    base = dict(vocab_size=13, block_size=8, d_model=8, n_head=2, n_prelude=1, n_layer=2, n_coda=1, max_loops=4,
                halt_bias_init=-1.0, converge_tol=0.2, init_std=0.3)
    base.update(overrides)
    return R.LoopConfig(**base)


def random_params(cfg, seed, dtype="float64"):
    """init_params with step scales and norm gains perturbed, so every parameter matters in the checks."""
    p = R.init_params(cfg, seed, dtype)
    rng = np.random.default_rng(seed + 1000)
    for name in p:
        if name.endswith("step_scale"):
            p[name] = p[name] + rng.normal(0, 0.5, p[name].shape).astype(dtype)
        elif "norm" in name:
            p[name] = p[name] + rng.normal(0, 0.2, p[name].shape).astype(dtype)
    return p


def batch(cfg, seed, B=2, T=7):
    rng = np.random.default_rng(seed + 2000)
    return rng.integers(0, cfg.vocab_size, (B, T)), rng.integers(0, cfg.vocab_size, (B, T))


def case_away_from_flips(cfg, B=2, T=7, max_tries=50):
    """(params, tokens, targets) of the first seed whose halting statistics all lie more than HALT_MARGIN from
    their thresholds: the one case where a tiny perturbation may flip N(t), and so the only one excluded."""
    for seed in range(max_tries):
        params, (tokens, targets) = random_params(cfg, seed), batch(cfg, seed, B, T)
        _, aux = R.forward(params, tokens, cfg)
        if float(aux["halt_margin"].min()) > HALT_MARGIN:
            return params, tokens, targets
    raise AssertionError(f"no seed in {max_tries} kept halting {HALT_MARGIN} away from its thresholds for {cfg}")
