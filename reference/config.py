"""One config type for every model of the family, and the named presets both backends use.

tokens -> embed -> prelude (unique blocks, once)
       -> core: unique blocks looped up to max_loops times, per-token halting
       -> coda (unique blocks, once) -> norm -> LM head (tied to embed by default)
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from .body import ATTENTIONS, FFNS, MEMORY_MODES
from .halting import RULES

LOOP_SCOPES = ("stack", "layer")
HALT_MODES = tuple(RULES)          # the registered halting rules (reference/halting/__init__.py)
ATTENTION_BODIES = tuple(ATTENTIONS)  # the registered block bodies (reference/body/__init__.py)
FFN_BODIES = tuple(FFNS)
INJECTIONS = ("none", "add", "concat")
NORMS = ("rmsnorm", "layernorm")
ACTIVATIONS = ("gelu", "relu", "swiglu")
HALTED_KV = ("live", "frozen")


@dataclass(frozen=True)
class LoopConfig:
    """Every architectural knob of an adaptive looped transformer. Validated at construction."""

    # sizes
    vocab_size: int = 256          # token ids in [0, vocab_size); gpu.train sets it from the data's tokenizer
    block_size: int = 64           # longest sequence the model accepts (context length)
    d_model: int = 64              # width D of the residual stream
    n_head: int = 4                # attention heads (head width D / n_head, even with RoPE)
    n_kv_head: int = 0             # key/value heads, grouped-query attention (a divisor of n_head); 0 = n_head (MHA)
    mlp_ratio: int = 4             # hidden width of the MLP = mlp_ratio * d_model
    ffn_hidden: int = 0            # the MLP's hidden width F, any size (Llama's intermediate_size); 0 = mlp_ratio * d_model
    n_prelude: int = 1             # unique blocks run once before the loop
    n_layer: int = 1               # unique core blocks, the ones that loop
    n_coda: int = 1                # unique blocks run once after the loop
    # looping
    max_loops: int = 4             # K: most steps any token may take
    min_loops: int = 1             # no token halts before this step
    loop_scope: str = "stack"      # stack: loop the whole core; layer: each core block loops on its own
    input_injection: str = "none"  # feed the loop input e into every step: none | add | concat
    step_scale_init: float = 0.1   # gamma of s_k = s_{k-1} + gamma * r(x_k); near zero = near-identity loops
    backprop_loops: int = 0        # truncated backprop through depth: gradients flow through the last k steps only (0 = all)
    halted_kv: str = "live"        # a halted token's keys/values at blocks 2.. of its group: live (recomputed each step) |
    #                                frozen (those of the step after its exit, held; reference/loop.py)
    # halting
    halt: str = "act"              # halting rule: fixed | act | pondernet | converge | exit_gate
    act_eps: float = 0.01          # ACT halts once the cumulative halting sum reaches 1 - eps (PonderNet: survival <= eps)
    halt_bias_init: float = 1.0    # Graves 2016 uses +1 (halt early); "deep start" uses -3
    halt_penalty: float = 0.001    # tau: weight of the mean ponder cost in the loss (0.01 collapses tiny to depth 1)
    pondernet_prior: float = 0.5   # lambda_p of the truncated geometric prior
    pondernet_beta: float = 0.01   # beta: weight of KL(p || prior) in the loss
    converge_tol: float = 0.05     # converge halts once ||s_k - s_{k-1}|| / ||s_{k-1}|| < tol
    exit_threshold: float = 0.5    # exit_gate: exit at the first step whose cumulative exit probability >= q (1 = never early)
    exit_entropy: float = 0.05     # exit_gate: beta, weight of KL(exit distribution || uniform) = -entropy + const
    exit_stage2_k: float = 50.0    # exit_gate Stage II (--exit-stage2): k of the label w_n = sigmoid(k (I_n - gamma))
    exit_stage2_gamma: float = 0.005  # exit_gate Stage II: gamma, the loss improvement a step must bring to be run
    # block body
    attention: str = "softmax"     # attention body: softmax (causal multi-head softmax) | linear (causal linear, elu+1)
    ffn: str = "mlp"               # feed-forward body: mlp (two layers, the activation below) | moe (MoEUT's sigma-MoE)
    n_experts: int = 4             # moe: experts per MoE body (the seed's setting: 4 experts, top-2)
    moe_top_k: int = 2             # moe: experts each token uses, the top-k of sigmoid scores (no renormalisation)
    moe_expert_size: int = 0       # moe: width of one expert; 0 = the MLP's width F // moe_top_k (the MLP's FLOPs)
    moe_balance: float = 0.01      # moe: weight of the balance loss KL(mean expert selection || uniform) (MoEUT: 0.01)
    memory: str = "none"           # gated memory banks in the core blocks (Frey et al.): none | local | global | both
    memory_local_slots: int = 16   # memory: slots of each core block's own bank
    memory_global_slots: int = 64  # memory: slots of the one bank every core block shares
    memory_gate_bias_init: float = -2.0  # memory: initial b_g of the gates sigmoid(W_g h + b_g); -2 = mostly closed
    norm: str = "rmsnorm"          # rmsnorm | layernorm, before each body and at the end
    norm_eps: float = 1e-5         # epsilon of the block, memory and final norms: x / sqrt(mean(x^2) + eps) (Llama: rms_norm_eps)
    activation: str = "gelu"       # gelu (tanh approximation) | relu | swiglu (gated MLP, Llama: proj(silu(gate x) * fc x))
    rope: bool = True              # rotary position embeddings; False = learned absolute positions
    rope_base: float = 10000.0     # RoPE angle of position t, pair i: t * rope_base^(-2i / head_dim)
    tie_embeddings: bool = True    # LM head shares the token embedding matrix
    init_std: float = 0.02         # std of the normal init of weights (residual projections scaled down, GPT-2)

    def __post_init__(self):
        _validate(self)

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    @property
    def kv_heads(self) -> int:
        """Key/value heads: n_kv_head, or n_head when it is 0 (plain multi-head attention)."""
        return self.n_kv_head or self.n_head

    @property
    def ffn_width(self) -> int:
        """Hidden width F of the MLP: ffn_hidden, or mlp_ratio * d_model when it is 0."""
        return self.ffn_hidden or self.mlp_ratio * self.d_model

    @property
    def n_groups(self) -> int:
        """Number of independently halting loop groups: 1 for stack scope, n_layer for layer scope."""
        return 1 if self.loop_scope == "stack" else self.n_layer

    def group_blocks(self, g: int) -> list[int]:
        """Indices of the core blocks that loop together in group g."""
        return list(range(self.n_layer)) if self.loop_scope == "stack" else [g]

    def replace(self, **changes) -> "LoopConfig":
        """A copy with some fields changed (validated again)."""
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise ValueError(f"unknown LoopConfig field(s) {unknown}; known fields: {field_names()}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "LoopConfig":
        unknown = sorted(set(d) - set(field_names()))
        if unknown:
            raise ValueError(f"unknown LoopConfig field(s) {unknown}; known fields: {field_names()}")
        return cls(**d)


def field_names() -> list[str]:
    return [f.name for f in dataclasses.fields(LoopConfig)]


def _fail(name, value, accepted):
    raise ValueError(f"LoopConfig.{name}={value!r} is invalid: expected {accepted}")


def _validate(c: LoopConfig) -> None:
    for f in dataclasses.fields(c):
        v = getattr(c, f.name)
        if f.type in ("int", int) and (isinstance(v, bool) or not isinstance(v, int)):
            _fail(f.name, v, "an int")
        if f.type in ("float", float) and (isinstance(v, bool) or not isinstance(v, (int, float))):
            _fail(f.name, v, "a number")
        if f.type in ("float", float) and not math.isfinite(v):
            _fail(f.name, v, "a finite number (not nan or inf)")
        if f.type in ("bool", bool) and not isinstance(v, bool):
            _fail(f.name, v, "True or False")
    for name in ("vocab_size", "block_size", "d_model", "n_head", "mlp_ratio", "max_loops", "min_loops", "n_layer",
                 "n_experts", "moe_top_k", "memory_local_slots", "memory_global_slots"):
        if getattr(c, name) < 1:
            _fail(name, getattr(c, name), "an int >= 1")
    for name in ("n_prelude", "n_coda", "backprop_loops", "moe_expert_size", "n_kv_head", "ffn_hidden"):
        if getattr(c, name) < 0:
            _fail(name, getattr(c, name), "an int >= 0")
    if c.d_model % c.n_head:
        _fail("n_head", c.n_head, f"a divisor of d_model={c.d_model}")
    if c.n_head % c.kv_heads:
        _fail("n_kv_head", c.n_kv_head, f"a divisor of n_head={c.n_head} (0 = n_head: plain multi-head attention)")
    if c.rope and c.head_dim % 2:
        _fail("d_model", c.d_model, f"d_model / n_head even for RoPE (head_dim={c.head_dim})")
    if c.min_loops > c.max_loops:
        _fail("min_loops", c.min_loops, f"an int in [1, max_loops={c.max_loops}]")
    if c.moe_top_k > c.n_experts:
        _fail("moe_top_k", c.moe_top_k, f"an int in [1, n_experts={c.n_experts}] (no more experts than exist)")
    if c.moe_expert_size == 0 and c.ffn_width < c.moe_top_k:
        _fail("moe_expert_size", 0, f"an int >= 1 here: the default MLP width // moe_top_k = "
              f"{c.ffn_width} // {c.moe_top_k} is 0")
    registered = (("halt", tuple(RULES)), ("attention", tuple(ATTENTIONS)), ("ffn", tuple(FFNS)),  # read live
                  ("memory", MEMORY_MODES))
    for name, options in (("loop_scope", LOOP_SCOPES), ("input_injection", INJECTIONS), ("norm", NORMS),
                          ("activation", ACTIVATIONS), ("halted_kv", HALTED_KV), *registered):
        if getattr(c, name) not in options:
            _fail(name, getattr(c, name), f"one of {options}")
    if not 0 < c.act_eps < 1:
        _fail("act_eps", c.act_eps, "a number in (0, 1)")
    if not 0 < c.pondernet_prior < 1:
        _fail("pondernet_prior", c.pondernet_prior, "a number in (0, 1)")
    if not 0 < c.exit_threshold <= 1:
        _fail("exit_threshold", c.exit_threshold, "a number in (0, 1]")
    if RULES[c.halt].expected_exit_loss and c.n_groups > 1:
        _fail("loop_scope", c.loop_scope, f"'stack' (or n_layer=1) with halt={c.halt!r}: each exit step is a whole "
                                          f"model output, so there must be one loop group")
    for name in ("halt_penalty", "pondernet_beta", "converge_tol", "init_std", "moe_balance", "exit_entropy",
                 "exit_stage2_gamma"):
        if getattr(c, name) < 0:
            _fail(name, getattr(c, name), "a number >= 0")
    if c.exit_stage2_k <= 0:
        _fail("exit_stage2_k", c.exit_stage2_k, "a number > 0 (the steepness of the Stage II label)")
    if c.rope_base <= 0:
        _fail("rope_base", c.rope_base, "a number > 0")
    if c.norm_eps <= 0:
        _fail("norm_eps", c.norm_eps, "a number > 0")
    if c.activation == "swiglu" and c.ffn != "mlp":
        _fail("activation", c.activation, f"gelu or relu with ffn={c.ffn!r} (swiglu is the gated form of ffn='mlp')")


def dense_variant(cfg: LoopConfig, n_layer: int) -> LoopConfig:
    """The dense baseline of `cfg`'s width: n_layer unique blocks run once each, no prelude/coda, no looping,
    no halting, no injection, a unit step scale (so each block is a plain residual block)."""
    return cfg.replace(n_prelude=0, n_layer=n_layer, n_coda=0, max_loops=1, min_loops=1, halt="fixed",
                       loop_scope="layer", input_injection="none", step_scale_init=1.0)


# Presets. Parameter counts follow Kaplan et al.: the "100m"/"400m" in a name counts the
# non-embedding parameters (unique ones for the looped model, effective=unrolled at max depth).
_GPT2 = dict(vocab_size=50304, block_size=1024, d_model=1024, n_head=16)
_LOOPED_100M = LoopConfig(**_GPT2, n_prelude=1, n_layer=6, n_coda=1, max_loops=4)
PRESETS: dict[str, LoopConfig] = {
    # a few seconds a step in numpy: for tests, tutorials and the CPU default run. Its halting is the project's
    # recipe, a deep start (halting bias -3, chosen from three-seed sweeps: docs/results.md, section 8); the maths
    # default of LoopConfig stays Graves' +1
    "tiny": LoopConfig(halt_bias_init=-3.0),
    # 8 unique blocks (~101M non-embedding params), core of 6 looped up to 4 times = 26 effective blocks
    "looped-100m": _LOOPED_100M,
    # same unique parameters as looped-100m, no looping
    "dense-100m": dense_variant(_LOOPED_100M, 8),
    # same training FLOPs per token as looped-100m at its full depth of 4 (= iso_flop_dense(looped-100m, 4))
    "dense-400m": dense_variant(_LOOPED_100M, 26),
}


def get_preset(name: str, **overrides) -> LoopConfig:
    """The named preset, with optional field overrides."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name].replace(**overrides) if overrides else PRESETS[name]
