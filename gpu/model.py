"""The torch twin of reference/model.py and reference/loop.py: an adaptive looped transformer as an nn.Module.

tokens (B, T) -> embed (+ learned positions unless RoPE) -> prelude blocks -> loop groups -> coda blocks
       -> final norm -> logits (B, T, V) = x @ W_head^T, W_head = embed.weight when tied.
A loop group with input e runs, for k = 1..K (reference/loop.py):
    x_k = inject(s_{k-1}, e);  r_k = F(x_k) - x_k;  s_k = s_{k-1} + m_k * gamma * r_k;  o = sum_k weights_k s_k
with m_k = 0 once a token has halted (its state frozen). Parameter names and shapes are reference.param_shapes(cfg),
so `from_reference` / `to_reference` move weights between the backends in one call.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from reference.config import LoopConfig
from reference.model import AUX_KEYS, check_params, init_params
from reference.weights import load_params, save_params

from . import halting
from .layers import Block, Norm, norm, rope_tables

NORM_FLOOR = 1e-12  # reference.loop._NORM_FLOOR: keeps delta finite for an all-zero state


def has_halting_unit(cfg) -> bool:
    return cfg.halt in ("act", "pondernet")


class HaltUnit(nn.Module):
    """h = sigmoid(w . norm(s) + b), the norm without a gain (reference.loop.halt_unit_forward).
    The dot product is a multiply-and-sum, which autocast leaves in float32: halting decisions are not made in bf16."""

    def __init__(self, cfg):
        super().__init__()
        self.kind = cfg.norm
        self.weight = nn.Parameter(torch.zeros(cfg.d_model))  # (D,)
        self.bias = nn.Parameter(torch.zeros(1))               # (1,)

    def forward(self, s):  # (B, T, D) -> (B, T)
        return torch.sigmoid((norm(s, kind=self.kind) * self.weight).sum(dim=-1) + self.bias[0])


class LoopGroup(nn.Module):
    """One group of weight-tied core blocks run up to max_loops times with per-token halting. The blocks
    themselves live in the model's `core` list (so their names stay core.i.*) and are passed to forward."""

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.step_scale = nn.Parameter(torch.full((cfg.d_model,), cfg.step_scale_init))  # gamma (D,)
        self.halt = HaltUnit(cfg) if has_halting_unit(cfg) else None
        D = cfg.d_model
        self.inject = nn.Linear(2 * D, D, bias=False) if cfg.input_injection == "concat" else None

    def step(self, blocks, s, e, rope_cs):
        """r = F(inject(s, e)) - inject(s, e): the un-scaled update of one loop step. (B, T, D) -> (B, T, D)."""
        mode = self.cfg.input_injection
        x = s if mode == "none" else s + e if mode == "add" else self.inject(torch.cat([s, e], dim=-1))
        y = x
        for block in blocks:
            y = block(y, rope_cs)
        return y - x

    def forward(self, blocks, e, rope_cs, loops: int | None = None):
        """e: (B, T, D) -> (o (B, T, D), aux of (B, T[, K]) tensors). loops: max_loops for this call (None = cfg's)."""
        cfg = self.cfg
        K = cfg.max_loops if loops is None else loops
        B, T, D = e.shape
        mode = cfg.halt
        # Skipping steps once no token runs needs a host sync (a graph break), so it is eager-only and only for
        # adaptive modes. Under torch.compile every step runs; a fully halted step is then an exact no-op (m = 0).
        early_exit = mode != "fixed" and not torch.compiler.is_compiling()
        s = e
        running = torch.ones(B, T, dtype=torch.bool, device=e.device)
        cum = torch.zeros(B, T, dtype=e.dtype, device=e.device)      # ACT: sum of h so far
        survival = torch.ones(B, T, dtype=e.dtype, device=e.device)  # PonderNet: prod of (1 - lambda) so far
        states, signals, deltas = [], [], []
        for k in range(1, K + 1):
            if early_exit and not bool(running.any()):
                s_new = s  # every token has halted: the remaining steps are no-ops
            else:
                mask = running[..., None].to(e.dtype)  # (B, T, 1)
                s_new = s + mask * self.step_scale * self.step(blocks, s, e, rope_cs)
            s_det, s_new_det = s.detach(), s_new.detach()
            delta = ((s_new_det - s_det) ** 2).sum(-1).sqrt() / ((s_det * s_det).sum(-1).sqrt() + NORM_FLOOR)  # (B, T)
            s = s_new
            states.append(s)
            deltas.append(delta)
            sig = self.halt(s) if self.halt is not None and k >= cfg.min_loops else torch.zeros_like(delta)
            signals.append(sig)
            # the online halting decision; halting.* recomputes the same N from the signals
            if mode == "act":
                cum = cum + sig.detach()
                running = running & ~(cum >= 1.0 - cfg.act_eps)
            elif mode == "pondernet":
                survival = survival * (1.0 - sig.detach())
                if k >= cfg.min_loops:
                    running = running & ~(survival <= cfg.act_eps)
            elif mode == "converge" and k >= cfg.min_loops:
                running = running & ~(delta < cfg.converge_tol)
        signals = torch.stack(signals, dim=-1)  # (B, T, K)
        deltas = torch.stack(deltas, dim=-1)    # (B, T, K)
        res = self._halting(signals, deltas)
        o = sum(res.weights[..., k, None] * s_k for k, s_k in enumerate(states))  # (B, T, D)
        aux = dict(weights=res.weights, n_steps=res.n_steps, remainder=res.remainder, ponder_cost=res.ponder_cost,
                   kl=res.kl, halt_margin=res.margin, halt_probs=signals, deltas=deltas)
        return o, aux

    def _halting(self, signals, deltas):
        cfg = self.cfg
        if cfg.halt == "act":
            return halting.act(signals, cfg.act_eps, cfg.min_loops)
        if cfg.halt == "pondernet":
            return halting.pondernet(signals, cfg.act_eps, cfg.min_loops, cfg.pondernet_prior)
        if cfg.halt == "converge":
            return halting.converge(deltas, cfg.converge_tol, cfg.min_loops)
        return halting.fixed(signals[..., 0], signals.shape[-1])


class LoopedTransformer(nn.Module):
    """The whole model. forward(tokens, targets=None) -> (logits (B, T, V), loss or None, aux).

    loss = mean cross-entropy (targets of -1 ignored) + halt_penalty * mean ponder cost   (act, pondernet)
                                                      + pondernet_beta * mean KL            (pondernet),
    the means running over tokens and loop groups (reference.model.halting_loss_terms).
    aux: n_steps, remainder, ponder_cost, kl, halt_margin (B, T, G); weights, halt_probs, deltas (B, T, G, K).
    seed: weights drawn by reference.init_params(cfg, seed); None leaves torch's defaults (from_reference fills them).
    """

    def __init__(self, cfg: LoopConfig, seed: int | None = 0):
        super().__init__()
        self.cfg = cfg
        V, D = cfg.vocab_size, cfg.d_model
        self.embed = nn.Embedding(V, D)
        self.pos = None if cfg.rope else nn.Embedding(cfg.block_size, D)
        self.prelude = nn.ModuleList(Block(cfg) for _ in range(cfg.n_prelude))
        self.core = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.coda = nn.ModuleList(Block(cfg) for _ in range(cfg.n_coda))
        self.loop = nn.ModuleList(LoopGroup(cfg) for _ in range(cfg.n_groups))
        self.norm_f = Norm(D, cfg.norm)
        self.lm_head = None if cfg.tie_embeddings else nn.Linear(D, V, bias=False)
        if seed is not None:
            self.load_reference(init_params(cfg, seed, dtype="float32"))

    def forward(self, tokens, targets=None, loops: int | None = None):
        """loops: run every loop group up to this many steps instead of cfg.max_loops (the same weights; equal to
        the reference with cfg.replace(max_loops=loops)). Training with --random-loops draws it per step."""
        cfg = self.cfg
        if loops is not None and loops < cfg.min_loops:
            raise ValueError(f"loops={loops} is below min_loops={cfg.min_loops}; pass loops >= min_loops")
        tokens = _as_tensor(tokens, self.embed.weight.device)
        targets = None if targets is None else _as_tensor(targets, self.embed.weight.device)
        if not torch.compiler.is_compiling():  # the checks read values (a host sync); compiled callers check data once
            check_tokens(tokens, cfg)
            if targets is not None:
                check_targets(targets, tokens, cfg)
        T = tokens.shape[1]
        rope_cs = rope_tables(T, cfg.head_dim, cfg.rope_base, tokens.device) if cfg.rope else None
        x = self.embed(tokens)  # (B, T, D)
        if self.pos is not None:
            x = x + self.pos.weight[:T]
        for block in self.prelude:
            x = block(x, rope_cs)
        group_aux = []
        for g, group in enumerate(self.loop):
            x, aux_g = group([self.core[i] for i in cfg.group_blocks(g)], x, rope_cs, loops)
            group_aux.append(aux_g)
        for block in self.coda:
            x = block(x, rope_cs)
        logits = F.linear(self.norm_f(x), self.embed.weight if self.lm_head is None else self.lm_head.weight)
        aux = {key: torch.stack([a[key] for a in group_aux], dim=2) for key in AUX_KEYS}
        return logits, (None if targets is None else self.loss(logits, targets, aux)), aux

    def loss(self, logits, targets, aux):
        """mean CE + halt_penalty * mean ponder cost + pondernet_beta * mean KL (reference.model.loss)."""
        cfg = self.cfg
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-1)
        if has_halting_unit(cfg):
            loss = loss + cfg.halt_penalty * aux["ponder_cost"].mean()
        if cfg.halt == "pondernet":
            loss = loss + cfg.pondernet_beta * aux["kl"].mean()
        return loss

    @torch.no_grad()
    def load_reference(self, params: dict) -> "LoopedTransformer":
        """Copy numpy params (checked against the config: a ValueError lists every mismatch) into this module."""
        check_params(params, self.cfg)
        self.load_state_dict({k: torch.as_tensor(np.asarray(v)) for k, v in params.items()})
        return self

    def to_reference(self) -> dict[str, np.ndarray]:
        """name -> numpy array (a copy, on the CPU; bf16/fp16 weights come back as float32)."""
        out = {}
        for name, t in self.state_dict().items():
            t = t.detach().cpu()
            out[name] = (t.float() if t.dtype in (torch.bfloat16, torch.float16) else t).numpy().copy()
        return out


def from_reference(params: dict, cfg: LoopConfig, device=None, dtype=None) -> LoopedTransformer:
    """The torch model holding numpy `params` (same names and shapes as reference.param_shapes(cfg)).
    dtype defaults to the params' own (float64 stays float64)."""
    check_params(params, cfg)
    dtype = dtype or torch.as_tensor(np.asarray(params["embed.weight"])).dtype
    return LoopedTransformer(cfg, seed=None).to(device=device, dtype=dtype).load_reference(params)


def save(module: LoopedTransformer, path) -> None:
    """Write the module's weights and config as safetensors, in the reference's format (reference.weights)."""
    save_params(path, module.to_reference(), module.cfg)


def load(path, cfg: LoopConfig | None = None, device=None, dtype=None) -> LoopedTransformer:
    """Read a safetensors file written by either backend; with cfg given the file must match it."""
    params, cfg = load_params(path, cfg)
    return from_reference(params, cfg, device=device, dtype=dtype)


# ----------------------------------------------------------------------------- input checks
def _as_tensor(x, device):
    return torch.from_numpy(x).to(device) if isinstance(x, np.ndarray) else x


def check_tokens(tokens, cfg: LoopConfig, name="tokens") -> None:
    """reference.model.check_tokens for tensors, with the same messages: integer (B, T), ids in [0, vocab),
    T <= block_size. One host sync, for the id range."""
    if not isinstance(tokens, torch.Tensor) or tokens.ndim != 2:
        shape = tuple(tokens.shape) if hasattr(tokens, "shape") else None
        raise ValueError(f"{name} must be a 2-D integer array (batch, time); got shape {shape}")
    if tokens.dtype.is_floating_point or tokens.dtype.is_complex or tokens.dtype == torch.bool:
        raise ValueError(f"{name} must hold integer token ids; got dtype {tokens.dtype}")
    B, T = tokens.shape
    if T < 1 or T > cfg.block_size:
        raise ValueError(f"{name} has length {T}, must be in [1, block_size={cfg.block_size}]: "
                         f"cut the sequence or raise block_size")
    if B < 1:
        raise ValueError(f"{name} is an empty batch (batch size 0): pass at least one sequence")
    lo, hi = (int(v) for v in torch.stack([tokens.min(), tokens.max()]).cpu())
    floor = -1 if name == "targets" else 0
    if lo < floor or hi >= cfg.vocab_size:
        raise ValueError(f"{name} contain ids in [{lo}, {hi}], outside [{floor}, vocab_size={cfg.vocab_size}): "
                         f"use the tokenizer the model was built for or raise vocab_size")


def check_targets(targets, tokens, cfg: LoopConfig) -> None:
    """Targets: like tokens, -1 (ignored) allowed, the same shape as tokens, at least one real target."""
    check_tokens(targets, cfg, "targets")
    if targets.shape != tokens.shape:
        raise ValueError(f"targets shape {tuple(targets.shape)} differs from tokens shape {tuple(tokens.shape)}")
    if not bool((targets != -1).any()):
        raise ValueError("cross_entropy: every target is the ignore index -1; give at least one real target")
