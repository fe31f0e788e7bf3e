"""aux["halt_probs"] and aux["deltas"] recomputed by hand (issue 10, "test gaps"; before, only the tutorial checked them).

An independent numpy forward of the loop, written here from the definitions (docs: reference/loop.py's docstring) and
the parameter names alone, recomputes every step state s_k of every token and group:
    s_0 = e,  x_k = inject(s_{k-1}, e),  s_k = s_{k-1} + m_k * gamma * (F(x_k) - x_k),  o = sum_k weights_k s_k
with m_k = 1 for k <= N (the token runs steps 1..N) and 0 after (frozen). N and the weights are taken from the aux
under test (both are checked against the rule functions elsewhere); everything else is recomputed. Then, for every
token, group and step k = 1..K, float64, to 1e-10:
    halt_probs_k = sigmoid(w . norm(s_k) + b)  for k >= min_loops (act, pondernet; norm without gain), else 0
    deltas_k     = ||s_k - s_{k-1}|| / (||s_{k-1}|| + 1e-12)          (exactly 0 once the token has halted)
for the numpy reference and for the torch model (float64), on configs where N differs across tokens.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import reference as R
from cases import batch, random_params, small_config
from gpu.model import from_reference

NORM_EPS = 1e-5
NORM_FLOOR = 1e-12


# ----------------------------------------------------------------------------- an independent forward
def _norm(x, kind, w=None, b=None):
    if kind == "rmsnorm":
        y = x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + NORM_EPS)
    else:
        xc = x - x.mean(axis=-1, keepdims=True)
        y = xc / np.sqrt(np.mean(xc * xc, axis=-1, keepdims=True) + NORM_EPS)
    if w is not None:
        y = y * w
    return y if b is None else y + b


def _rope(x, T, hd, base):
    """Rotate the pairs (x_i, x_{i + hd/2}) by t * base^(-2i/hd). x: (B, H, T, hd)."""
    angle = np.array([[t * math.pow(base, -2.0 * i / hd) for i in range(hd // 2)] for t in range(T)])
    c, s = np.cos(angle), np.sin(angle)
    x1, x2 = x[..., : hd // 2], x[..., hd // 2:]
    return np.concatenate([x1 * c - x2 * s, x1 * s + x2 * c], axis=-1)


def _block(p, prefix, x, cfg):
    B, T, D = x.shape
    H, hd = cfg.n_head, D // cfg.n_head
    a = _norm(x, cfg.norm, p[f"{prefix}.attn_norm.weight"], p.get(f"{prefix}.attn_norm.bias"))
    qkv = a @ p[f"{prefix}.attn.qkv.weight"].T
    q, k, v = (qkv[..., j * D:(j + 1) * D].reshape(B, T, H, hd).transpose(0, 2, 1, 3) for j in range(3))
    if cfg.rope:
        q, k = _rope(q, T, hd, cfg.rope_base), _rope(k, T, hd, cfg.rope_base)
    scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(hd)
    scores = np.where(np.tril(np.ones((T, T), dtype=bool)), scores, -np.inf)
    att = np.exp(scores - scores.max(axis=-1, keepdims=True))
    att = att / att.sum(axis=-1, keepdims=True)
    x = x + (att @ v).transpose(0, 2, 1, 3).reshape(B, T, D) @ p[f"{prefix}.attn.proj.weight"].T
    m = _norm(x, cfg.norm, p[f"{prefix}.mlp_norm.weight"], p.get(f"{prefix}.mlp_norm.bias"))
    h = m @ p[f"{prefix}.mlp.fc.weight"].T
    if cfg.activation == "gelu":
        h = 0.5 * h * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (h + 0.044715 * h ** 3)))
    else:
        h = np.maximum(h, 0.0)
    return x + h @ p[f"{prefix}.mlp.proj.weight"].T


def expected_probs_and_deltas(p, tokens, cfg, aux):
    """(halt_probs, deltas) (B, T, G, K) recomputed from the weights, with N and the weights taken from aux."""
    B, T = tokens.shape
    K, G = cfg.max_loops, cfg.n_groups
    x = p["embed.weight"][tokens]
    if not cfg.rope:
        x = x + p["pos.weight"][:T]
    for i in range(cfg.n_prelude):
        x = _block(p, f"prelude.{i}", x, cfg)
    probs, deltas = np.zeros((B, T, G, K)), np.zeros((B, T, G, K))
    for g in range(G):
        blocks = [f"core.{i}" for i in (range(cfg.n_layer) if cfg.loop_scope == "stack" else [g])]
        e, s, states = x, x, []
        for k in range(1, K + 1):
            if cfg.input_injection == "none":
                xk = s
            elif cfg.input_injection == "add":
                xk = s + e
            else:
                xk = np.concatenate([s, e], axis=-1) @ p[f"loop.{g}.inject.weight"].T
            y = xk
            for prefix in blocks:
                y = _block(p, prefix, y, cfg)
            runs = (k <= aux["n_steps"][:, :, g])[..., None]  # (B, T, 1)
            s_new = np.where(runs, s + p[f"loop.{g}.step_scale"] * (y - xk), s)
            deltas[:, :, g, k - 1] = (np.linalg.norm(s_new - s, axis=-1)
                                      / (np.linalg.norm(s, axis=-1) + NORM_FLOOR))
            s = s_new
            states.append(s)
            if cfg.halt in ("act", "pondernet") and k >= cfg.min_loops:
                z = _norm(s, cfg.norm) @ p[f"loop.{g}.halt.weight"] + p[f"loop.{g}.halt.bias"][0]
                probs[:, :, g, k - 1] = 1.0 / (1.0 + np.exp(-z))
        x = sum(aux["weights"][:, :, g, k, None] * states[k] for k in range(K))  # the group output
    return probs, deltas


# ----------------------------------------------------------------------------- the checks
CONFIGS = {
    "act-stack": dict(halt="act"),
    "act-layer-concat-min2": dict(halt="act", loop_scope="layer", input_injection="concat", min_loops=2,
                                  act_eps=0.3),
    "pondernet-layer-add": dict(halt="pondernet", loop_scope="layer", input_injection="add", act_eps=0.3),
    "pondernet-stack-layernorm-relu-norope": dict(halt="pondernet", norm="layernorm", activation="relu", rope=False,
                                                 tie_embeddings=False, act_eps=0.3),
    "converge-stack-add": dict(halt="converge", input_injection="add"),
    "converge-layer-min2": dict(halt="converge", loop_scope="layer", min_loops=2, converge_tol=0.3),
    "fixed-stack": dict(halt="fixed"),
}


def _aux(backend, params, tokens, cfg):
    if backend == "reference":
        return R.forward(params, tokens, cfg)[1]
    model = from_reference(params, cfg, dtype=torch.float64)
    with torch.no_grad():
        _, _, aux = model(torch.from_numpy(tokens))
    return {k: v.numpy() for k, v in aux.items()}


def _case(name):
    cfg = small_config(**CONFIGS[name])
    params = random_params(cfg, 0)
    tokens, _ = batch(cfg, 0, B=3, T=8)
    return cfg, params, tokens


@pytest.mark.parametrize("backend", ["reference", "torch"])
@pytest.mark.parametrize("name", CONFIGS)
def test_equivalence_halt_probs_and_deltas_by_hand(name, backend):
    cfg, params, tokens = _case(name)
    aux = _aux(backend, params, tokens, cfg)
    B, T = tokens.shape
    assert aux["halt_probs"].shape == aux["deltas"].shape == (B, T, cfg.n_groups, cfg.max_loops)
    probs, deltas = expected_probs_and_deltas(params, tokens, cfg, aux)
    np.testing.assert_allclose(aux["halt_probs"], probs, rtol=1e-10, atol=1e-12, err_msg="halt_probs")
    np.testing.assert_allclose(aux["deltas"], deltas, rtol=1e-10, atol=1e-12, err_msg="deltas")
    steps = np.arange(1, cfg.max_loops + 1)
    halted = steps > aux["n_steps"][..., None]
    assert np.all(aux["deltas"][halted] == 0), "a halted token's state moved"
    assert np.all(aux["deltas"][~halted] > 0)
    if cfg.halt in ("act", "pondernet"):
        on = steps >= cfg.min_loops
        assert np.all((aux["halt_probs"][..., on] > 0) & (aux["halt_probs"][..., on] < 1))
        assert np.all(aux["halt_probs"][..., ~on] == 0)
    else:
        assert np.all(aux["halt_probs"] == 0)
    if cfg.halt != "fixed":  # the case is meaningful: some tokens halt before others (and before K)
        assert len(np.unique(aux["n_steps"])) >= 2, f"N is the same for every token: {np.unique(aux['n_steps'])}"
        assert halted.any()
