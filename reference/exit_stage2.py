"""Stage II of the exit gate (Ouro / LoopLM, Zhu et al. 2025, arXiv 2510.25741, as we read it): the language model
is frozen and only the gate lambda_n = sigmoid(z_n), z_n = w . norm(s_n) + b (loop.0.halt.weight, .bias), learns to
go on while the next step still improves the loss. Per real target t and step n, with L_n = CE_n(t) the cross-entropy
of step n's logits (coda + head applied to s_n, reference/exits.py; a constant for the gate):

    I_n  = max(0, L_{n-1} - L_n)                 the improvement step n brings (detached)
    w_n  = sigmoid(k (I_n - gamma))              the "ideal continuation" label: go on to step n while it improves
                                                 the loss by more than gamma
    L_II = 1 / (|V| |M|) sum_{t in V} sum_{n in M} -[ w_n log(1 - lambda_{n-1}) + (1 - w_n) log lambda_{n-1} ]

V: the real targets (not the ignore index -1). M = {n : max(2, min_loops + 1) <= n <= K}. k = LoopConfig.exit_stage2_k
(50), gamma = LoopConfig.exit_stage2_gamma (0.005).

Indexing: lambda_{n-1} is the exit probability after step n - 1, so it is the decision whether step n runs at all;
its label is therefore I_n, what step n is worth. The decisions the gate really takes are those after steps
m = n - 1 in [min_loops, K - 1]: no token exits before min_loops (lambda_m is set to 0 there), and lambda_K is never
used (p_K = S_{K-1}); hence n >= min_loops + 1 (and n >= 2), not n >= min_loops. The paper writes gate and label with
one step index; this pairing, the constants k = 50 and gamma = 0.005, and the BCE form are our reading, not checked
against the paper's text here. Since I_n >= 0, w_n >= sigmoid(-k gamma) (0.438 with the defaults): at a step that
improves nothing the label asks for an exit probability of 1 - sigmoid(-k gamma) = 0.562, not 1.

The BCE is computed on the logit, -[w log(1 - sigmoid z) + (1 - w) log sigmoid z] = w softplus(z) + (1 - w)
softplus(-z), softplus(z) = log(1 + e^z) (finite for every z), with dL/dz = sigmoid(z) - (1 - w); dL/dlambda is
that divided by lambda (1 - lambda). The Stage II pass runs every token for all K steps (exit_threshold = 1), so L_n
is the loss of the real step n rather than of a state frozen at an earlier exit.

Training in the reference: loss, grads = exit_stage2_loss_and_grads(params, tokens, targets, cfg), then an optimizer
over the gate alone, e.g. AdamW({n: params[n] for n in gate_param_names(cfg)}).step(grads). gpu.train does it with
--exit-stage2 (docs/training.md).
"""
from __future__ import annotations

from . import ops
from .checks import check_targets
from .exits import step_ce
from .halting import get_rule
from .halting.unit import unit_logit_backward, unit_logit_forward
from .model import forward


def sigmoid(x, xp):
    return 0.5 * (1.0 + xp.tanh(0.5 * x))  # no overflow for any x


def decision_steps(K: int, min_loops: int) -> range:
    """M: the 1-based steps n whose running the gate after step n - 1 decides; ValueError when there is none."""
    if K <= min_loops:
        raise ValueError(f"exit gate Stage II: max_loops={K} <= min_loops={min_loops} leaves the gate no decision to "
                         f"learn; raise max_loops or lower min_loops")
    return range(max(2, min_loops + 1), K + 1)


def exit_stage2_forward(z, nll, valid, min_loops, k, gamma):
    """L_II from z (B, T, K), the gate's logits after steps 1..K, nll (B, T, K) = L_n and valid (B, T) (the real
    targets) -> (L_II, cache)."""
    xp = ops.xp_of(z)
    steps = decision_steps(z.shape[-1], min_loops)
    count = int(valid.sum()) * len(steps)
    total, per_step = 0.0, []
    for n in steps:  # 1-based step n: its label w_n, the gate lambda_{n-1} (0-based index n - 2)
        gain = xp.maximum(nll[..., n - 2] - nll[..., n - 1], 0.0)  # I_n (B, T)
        w = sigmoid(k * (gain - gamma), xp)  # w_n (B, T)
        zm = z[..., n - 2]  # logit of lambda_{n-1} (B, T)
        bce = w * xp.logaddexp(0.0, zm) + (1.0 - w) * xp.logaddexp(0.0, -zm)
        total = total + xp.sum(xp.where(valid, bce, 0.0))
        per_step.append((n, w))
    return total / count, (z, valid, per_step, count)


def exit_stage2_backward(dloss, cache):
    """dL_II / dz (B, T, K): dloss (sigmoid(z_{n-1}) - (1 - w_n)) / (|V| |M|) at the decisions, 0 elsewhere."""
    z, valid, per_step, count = cache
    xp = ops.xp_of(z)
    dz = xp.zeros_like(z)
    for n, w in per_step:
        dz[..., n - 2] = xp.where(valid, sigmoid(z[..., n - 2], xp) - (1.0 - w), 0.0) * (dloss / count)
    return dz


def gate_param_names(cfg) -> list[str]:
    """The parameters Stage II trains: the exit gate's (loop.0.halt.weight, loop.0.halt.bias). ValueError for a
    halting rule that has no exit gate."""
    rule = get_rule(cfg.halt)
    if not (rule.expected_exit_loss and rule.uses_unit):
        raise ValueError(f"exit gate Stage II trains the exit gate, which halt={cfg.halt!r} does not have; use "
                         f"halt='exit_gate'")
    return list(rule.param_specs(0, cfg))


def exit_stage2_loss_and_grads(params, tokens, targets, cfg):
    """(L_II, grads) with grads holding only gate_param_names(cfg): every other parameter is frozen. One forward pass
    at exit_threshold = 1 (all K steps), the per-step CE of every state, the gate's logits, and the backward."""
    gate_param_names(cfg)  # ValueError without an exit gate
    decision_steps(cfg.max_loops, cfg.min_loops)
    check_targets(targets, tokens, cfg)
    _, _, cache = forward(params, tokens, cfg.replace(exit_threshold=1.0), _keep_cache=True)
    states, rope = cache[2][0][1], cache[4]  # (B, T, K, D): the step states of the one loop group
    xp = ops.xp_of(states)
    nll = xp.stack([c[0] for c in step_ce(params, states, targets, cfg, rope)], axis=-1)  # (B, T, K)
    gate = [unit_logit_forward(params, 0, states[:, :, m], cfg) for m in range(cfg.max_loops)]
    z = xp.stack([zm for zm, _ in gate], axis=-1)  # (B, T, K)
    loss, c_loss = exit_stage2_forward(z, nll, targets != ops.IGNORE_INDEX, cfg.min_loops, cfg.exit_stage2_k,
                                       cfg.exit_stage2_gamma)
    dz = exit_stage2_backward(1.0, c_loss)
    grads = {}
    for m, (_, c_gate) in enumerate(gate):
        unit_logit_backward(dz[..., m], c_gate, params, grads)  # the state's gradient is dropped: s_m is frozen
    return loss, grads
