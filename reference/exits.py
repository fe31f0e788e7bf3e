"""The expected loss over exit steps, for halting rules with `expected_exit_loss` (exit_gate; Ouro, arXiv 2510.25741):

    CE_exit = (1 / n_valid) sum_t sum_n p_n(t) CE_n(t),    CE_n(t) = -log softmax(head(s_n(t)))[y_t]

over the n_valid targets that are not the ignore index; head = coda -> final norm -> LM head (reference/head.py)
applied to the state after step n. Its backward gives each step state its own gradient (dstates) and the exit
distribution the gradient dCE/dp_n(t) = CE_n(t) / n_valid, which the rule carries on to its gate. `step_ce` (the
CE_n of every step) also gives Stage II its labels (reference/exit_stage2.py).
"""
from __future__ import annotations

from . import ops
from .head import head_backward, head_forward


def step_ce(params, states, targets, cfg, rope):
    """CE_n(t) of every step's logits: states (B, T, K, D), targets (B, T) -> per step n, (nll (B, T), 0 at ignored
    targets; the head's cache; the cross-entropy's cache, ending with n_valid)."""
    steps = []
    for n in range(states.shape[2]):
        logits, c_head = head_forward(params, states[:, :, n], cfg, rope)
        nll, c_ce = ops.token_cross_entropy_forward(logits, targets)  # (B, T), 0 at ignored targets
        steps.append((nll, c_head, c_ce))
    return steps


def expected_exit_ce(params, states, exit_probs, targets, cfg, rope):
    """states (B, T, K, D), exit_probs (B, T, K), targets (B, T) -> (CE_exit, cache)."""
    xp = ops.xp_of(states)
    steps = step_ce(params, states, targets, cfg, rope)
    total = sum(xp.sum(exit_probs[..., n] * nll) for n, (nll, _, _) in enumerate(steps))
    n_valid = steps[0][2][-1]
    return total / n_valid, (steps, exit_probs, n_valid)


def expected_exit_ce_backward(cache, grads):
    """Adds the head's weight gradients to `grads`; returns (dstates (B, T, K, D), dexit_probs (B, T, K))."""
    steps, exit_probs, n_valid = cache
    xp = ops.xp_of(exit_probs)
    dstates, dexit = [], []
    for n, (nll, c_head, c_ce) in enumerate(steps):
        dlogits = ops.token_cross_entropy_backward(exit_probs[..., n] / n_valid, c_ce)
        dstates.append(head_backward(dlogits, c_head, grads))
        dexit.append(nll / n_valid)
    return xp.stack(dstates, axis=2), xp.stack(dexit, axis=-1)
