"""The torch twin of reference/model.py and reference/loop.py: an adaptive looped transformer as an nn.Module.

tokens (B, T) -> embed (+ learned positions unless RoPE) -> prelude blocks -> loop groups -> coda blocks
       -> final norm -> logits (B, T, V) = x @ W_head^T, W_head = embed.weight when tied.
The loop groups are gpu/loop.py (run by an executor, gpu/executors/, with a halting rule, gpu/halting/). Parameter
names and shapes are reference.param_shapes(cfg), so `from_reference` / `to_reference` move weights between the
backends in one call.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from reference.checks import check_targets, check_tokens
from reference.config import LoopConfig
from reference.exit_stage2 import gate_param_names
from reference.model import GROUP_AUX_KEYS, check_params, init_params
from reference.weights import load_params, save_params

from .block import Block
from .body import Bank
from .body import loss_terms as body_terms
from .exit_stage2 import exit_stage2_loss
from .halting import get_rule
from .layers import Norm, rope_tables
from .loop import LoopGroup

PER_CALL_FIELDS = ("min_loops", "halt_penalty")  # what forward(..., overrides=) may change: no parameter depends on it

class LoopedTransformer(nn.Module):
    """The whole model. forward(tokens, targets=None) -> (logits (B, T, V), loss or None, aux).

    loss = mean cross-entropy (targets of -1 ignored) + the halting rule's terms (act: halt_penalty * mean ponder
    cost; pondernet: that + pondernet_beta * mean KL), the means running over tokens and loop groups, + the bodies'
    terms (moe: moe_balance * the balance regulariser, gpu/body/loss_terms.py).
    aux: n_steps, remainder, ponder_cost, kl, halt_margin (B, T, G); weights, halt_probs, deltas (B, T, G, K);
    route_margin (B, T), the smallest top-k margin of the MoE calls on each token (inf without MoE).
    seed: weights drawn by reference.init_params(cfg, seed); None leaves torch's defaults (from_reference fills them).
    executor: how the loop steps run (gpu/executors/): 'masked' computes every token at every step, 'compact' only
    the running ones, 'auto' (the default) compact where it applies and is faster, masked elsewhere. The numbers
    are the same; forward(executor=...) chooses per call.
    """

    def __init__(self, cfg: LoopConfig, seed: int | None = 0, executor: str = "auto"):
        super().__init__()
        self.cfg = cfg
        V, D = cfg.vocab_size, cfg.d_model
        self.embed = nn.Embedding(V, D)
        self.pos = None if cfg.rope else nn.Embedding(cfg.block_size, D)
        self.prelude = nn.ModuleList(Block(cfg) for _ in range(cfg.n_prelude))
        self.memory = Bank(cfg.memory_global_slots, cfg) if cfg.memory in ("global", "both") else None  # shared bank
        self.core = nn.ModuleList(Block(cfg, core=True, shared=self.memory) for _ in range(cfg.n_layer))
        self.coda = nn.ModuleList(Block(cfg) for _ in range(cfg.n_coda))
        self.loop = nn.ModuleList(LoopGroup(cfg, executor) for _ in range(cfg.n_groups))
        self.norm_f = Norm(D, cfg.norm, cfg.norm_eps)
        self.lm_head = None if cfg.tie_embeddings else nn.Linear(D, V, bias=False)
        if seed is not None:
            self.load_reference(init_params(cfg, seed, dtype="float32"))

    def forward(self, tokens, targets=None, loops: int | None = None, cache=None, overrides: dict | None = None,
                executor: str | None = None, exit_stage2: bool = False):
        """loops: run every loop group up to this many steps instead of cfg.max_loops (the same weights; equal to
        the reference with cfg.replace(max_loops=loops)). Training with --random-loops draws it per step.
        cache: a gpu.cache.KVCache holding the keys/values of the positions before `tokens` (decoding): the tokens
        sit at positions cache.length.., attend to the cached ones, and are added to the cache.
        overrides: this call's values of fields that change no parameter (PER_CALL_FIELDS), e.g. {"min_loops": 3}:
        equal to the reference with cfg.replace(**overrides). gpu.train's depth and halt-penalty warm-ups use it.
        executor: this call's executor ('auto', 'masked', 'compact'; None = the model's): the same numbers.
        exit_stage2: the loss is Stage II's of the exit gate (gpu/exit_stage2.py), on a pass that runs every token
        all K steps (exit_threshold 1; equal to reference.exit_stage2.exit_stage2_loss_and_grads): only the gate's
        parameters get a gradient. aux is that pass's (n_steps = K)."""
        cfg = self.call_config(overrides)
        if exit_stage2:
            if targets is None:
                raise ValueError("exit_stage2=True computes a loss: pass targets")
            gate_param_names(cfg)  # ValueError without an exit gate
            cfg = cfg.replace(exit_threshold=1.0)
        if loops is not None and loops < cfg.min_loops:
            raise ValueError(f"loops={loops} is below min_loops={cfg.min_loops}; pass loops >= min_loops")
        tokens = _as_tensor(tokens, self.embed.weight.device)
        targets = None if targets is None else _as_tensor(targets, self.embed.weight.device)
        if not torch.compiler.is_compiling():  # the checks read values (a host sync); compiled callers check data once
            check_tokens(tokens, cfg)
            if targets is not None:
                check_targets(targets, tokens, cfg)
        B, T = tokens.shape
        start = 0 if cache is None else cache.length
        if start + T > cfg.block_size:
            raise ValueError(f"{start} cached + {T} new positions exceed block_size={cfg.block_size}: the cache does "
                             f"not slide; start a new cache on the last block_size tokens")
        rope_cs = rope_tables(start + T, cfg.head_dim, cfg.rope_base, tokens.device) if cfg.rope else None
        site = _sites(cache, start, B, T, tokens.device)
        body_terms.start(self)  # bodies with a loss term (MoE) record their calls of this pass
        x = self.embed(tokens)  # (B, T, D)
        if self.pos is not None:
            x = x + self.pos.weight[start:start + T]
        for i, block in enumerate(self.prelude):
            x = block(x, rope_cs, site(f"prelude.{i}"))
        group_aux = []
        for g, group in enumerate(self.loop):
            idx = cfg.group_blocks(g)
            step_sites = None if cache is None else (lambda k, idx=idx: [site(f"core.{i}.step{k}") for i in idx])
            x, aux_g = group([self.core[i] for i in idx], x, rope_cs, loops, step_sites, cfg, executor)
            group_aux.append(aux_g)
        logits = self.head(x, rope_cs, site)
        if cache is not None:
            cache.length = start + T
        aux = {key: torch.stack([a[key] for a in group_aux], dim=2) for key in GROUP_AUX_KEYS}
        terms, aux["route_margin"] = body_terms.finish(self, aux["n_steps"], loops or cfg.max_loops)
        if targets is None:
            return logits, None, aux
        if exit_stage2:
            return logits, self.exit_stage2_loss(group_aux[0]["states"], targets, rope_cs, cfg), aux
        if get_rule(cfg.halt).expected_exit_loss:  # exit gate: expected CE over the exits (reference/exits.py)
            ce = self.expected_exit_ce(group_aux[0]["states"], aux["exit_probs"][:, :, 0], targets, rope_cs)
        else:
            ce = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-1)
        return logits, self.loss(ce, aux, cfg) + sum(terms.values()), aux

    def call_config(self, overrides: dict | None) -> LoopConfig:
        """The config of one call: self.cfg with `overrides` (only PER_CALL_FIELDS; ValueError naming the others)."""
        if not overrides:
            return self.cfg
        unknown = sorted(set(overrides) - set(PER_CALL_FIELDS))
        if unknown:
            raise ValueError(f"overrides {unknown}: a call may override only {PER_CALL_FIELDS} (fields that change "
                             f"no parameter); build another model for other fields")
        return self.cfg.replace(**overrides)

    def head(self, x, rope_cs, site=lambda name: None):
        """coda blocks -> final norm -> logits (reference/head.py): (B, T, D) -> (B, T, V)."""
        for i, block in enumerate(self.coda):
            x = block(x, rope_cs, site(f"coda.{i}"))
        return F.linear(self.norm_f(x), self.embed.weight if self.lm_head is None else self.lm_head.weight)

    def step_nll(self, state, targets, rope_cs):
        """CE(head(s_n)) per token: state (B, T, D), targets (B, T) -> (B * T,), 0 at ignored targets."""
        logits = self.head(state, rope_cs)
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-1, reduction="none")

    def expected_exit_ce(self, states, exit_probs, targets, rope_cs):
        """(1 / n_valid) sum_t sum_n p_n(t) CE(head(s_n))(t): states (B, T, K, D), exit_probs (B, T, K)."""
        total = 0.0
        for n in range(states.shape[2]):
            nll = self.step_nll(states[:, :, n], targets, rope_cs)
            total = total + (exit_probs[..., n].flatten() * nll).sum()  # nll = 0 at ignored targets
        return total / (targets != -1).sum()

    def exit_stage2_loss(self, states, targets, rope_cs, cfg):
        """Stage II's loss (gpu/exit_stage2.py) from the step states (B, T, K, D), detached: the per-step CE L_n
        without gradient, the gate's logits z_n = w . norm(s_n) + b with it."""
        states = states.detach()
        with torch.no_grad():
            nll = torch.stack([self.step_nll(states[:, :, n], targets, rope_cs).view(targets.shape)
                               for n in range(states.shape[2])], dim=-1)  # (B, T, K)
        z = self.loop[0].halt.logit(states)  # (B, T, K)
        return exit_stage2_loss(z, nll, targets != -1, cfg.min_loops, cfg.exit_stage2_k, cfg.exit_stage2_gamma)

    def loss(self, ce, aux, cfg: LoopConfig | None = None):
        """ce + the halting rule's terms, coefficient * mean aux entry (reference.model.halting_loss_terms); cfg: the
        call's config (default self.cfg)."""
        cfg = cfg or self.cfg
        for key, coef in get_rule(cfg.halt).loss_weights(cfg).items():
            ce = ce + coef * aux[key].mean()
        return ce

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


def from_reference(params: dict, cfg: LoopConfig, device=None, dtype=None, executor: str = "auto") -> LoopedTransformer:
    """The torch model holding numpy `params` (same names and shapes as reference.param_shapes(cfg)).
    dtype defaults to the params' own (float64 stays float64)."""
    check_params(params, cfg)
    dtype = dtype or torch.as_tensor(np.asarray(params["embed.weight"])).dtype
    model = LoopedTransformer(cfg, seed=None, executor=executor)
    return model.to(device=device, dtype=dtype).load_reference(params)


def save(module: LoopedTransformer, path) -> None:
    """Write the module's weights and config as safetensors, in the reference's format (reference.weights)."""
    save_params(path, module.to_reference(), module.cfg)


def load(path, cfg: LoopConfig | None = None, device=None, dtype=None) -> LoopedTransformer:
    """Read a safetensors file written by either backend; with cfg given the file must match it."""
    params, cfg = load_params(path, cfg)
    return from_reference(params, cfg, device=device, dtype=dtype)


def _sites(cache, start, B, T, device):
    """name -> the cache's Site for the positions start..start+T-1 of this call (None without a cache)."""
    if cache is None:
        return lambda name: None
    positions = (start + torch.arange(T, device=device)).expand(B, T)
    return lambda name: cache.site(name, positions)


def _as_tensor(x, device):
    return torch.from_numpy(x).to(device) if isinstance(x, np.ndarray) else x
