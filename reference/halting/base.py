"""What every halting rule shares: the `Halting` result, the `HaltingRule` interface, and small helpers.

A rule turns per-step halting signals (..., K) for steps n = 1..K into a `Halting`:
  weights   (..., K)  how much each step state contributes to the output, sum_n weights_n = 1
  n_steps   (...)     N, the realized depth (int)
  remainder (...)     1 - sum_{n<N} weights_n   (Graves' R for ACT)
  ponder_cost (...)   what the halt penalty charges: N + R (ACT), E[n] (PonderNet), N otherwise
  kl        (...)     KL(p || prior) for PonderNet, 0 otherwise
  margin    (...)     distance of the halting statistic to its threshold at the decisions taken;
                      a perturbation smaller than this cannot change N (used to exclude flips in tests)
  exit_probs (..., K) the distribution over exit steps the loss is an expectation over (exit_gate); None means
                      the weights themselves (every other rule)
Steps before `min_loops` never halt: their halting signals are ignored (treated as 0).
"""
from __future__ import annotations

from dataclasses import dataclass

from ..ops import xp_of

NORM_FLOOR = 1e-12  # keeps the relative change delta_k finite for an all-zero state


@dataclass
class Halting:
    weights: object
    n_steps: object
    remainder: object
    ponder_cost: object
    kl: object
    margin: object
    exit_probs: object = None


class HaltingRule:
    """One halting rule. The loop calls, at every step k = 1..K of a group:
        sig = rule.signal(...)                        the per-token signal h_k (0 for rules without a unit)
        state, halted = rule.decide(state, k, sig, delta, cfg)   the online decision: who stops after step k
    and after the last step `rule.resolve(signals, deltas, cfg)` recomputes the same N offline, with the weights
    of the step states, the remainder, the ponder cost, the KL and the margin. The reference differentiates
    `resolve` by hand (`resolve_backward`); the torch twin lets autograd do it.

    Class attributes a rule sets:
      adaptive         False when every token runs all K steps (no decision to make)
      uses_unit        True when the signal is the halting unit h_k = sigmoid(w . norm(s_k) + b) (halting/unit.py)
      threshold_field  the LoopConfig field holding the threshold of the decision (what analyses sweep), or None
      expected_exit_loss  True when the loss is the expected cross-entropy over exit steps, sum_n p_n CE(step n's
                       logits), instead of the cross-entropy of the weighted output (exit_gate); needs one loop group
    """

    name: str = ""
    adaptive: bool = True
    uses_unit: bool = False
    threshold_field: str | None = None
    expected_exit_loss: bool = False

    def param_specs(self, g: int, cfg) -> dict:
        """The rule's own parameters for loop group g, name -> ParamSpec (the halting unit's, if it uses one)."""
        from .unit import unit_param_specs
        return unit_param_specs(g, cfg) if self.uses_unit else {}

    def start(self, like):
        """The running statistic before step 1 (ACT's cumulative sum, PonderNet's survival); like: (B, T)."""
        return None

    def decide(self, state, k: int, sig, delta, cfg):
        """(state, halted (B, T) bool) after step k; halted tokens stop updating from step k + 1 on."""
        raise NotImplementedError

    def resolve(self, signals, deltas, cfg) -> Halting:
        """signals, deltas: (..., K) -> Halting."""
        raise NotImplementedError

    def resolve_backward(self, signals, cfg, dweights, dponder, dkl, dexit=None):
        """d loss / d signals (..., K) given the gradients of weights (..., K), ponder_cost and kl (...), and of
        exit_probs (..., K) for a rule with expected_exit_loss; None when no gradient reaches the signals (one-hot
        weights at a piecewise-constant N)."""
        return None

    def loss_weights(self, cfg) -> dict[str, float]:
        """aux key -> coefficient: the loss adds coefficient * mean(aux[key]) over tokens and groups."""
        return {}

    def step_flops(self, cfg) -> float:
        """Forward FLOPs per token and loop step of the rule's signal: 2 D for the halting unit's dot product."""
        return 2 * cfg.d_model if self.uses_unit else 0


# ----------------------------------------------------------------------------- helpers of the rules
def steps(xp, K, dtype):
    return xp.arange(1, K + 1, dtype=dtype)  # (K,) = 1..K


def before_min(xp, K, min_loops):
    return xp.arange(1, K + 1) < min_loops  # (K,) True where no halting is allowed


def first_true(xp, cond):
    """1-based index of the first True along the last axis; K where none is (the last step always halts)."""
    cond = cond.copy()
    cond[..., -1] = True
    return xp.argmax(cond, axis=-1) + 1


def margin(xp, stat, threshold, n_steps, min_loops):
    """min over the decision steps n in [min_loops, min(N, K-1)] of |stat_n - threshold| (inf if none)."""
    K = stat.shape[-1]
    n = xp.arange(1, K + 1)
    decided = (n >= min_loops) & (n < K) & (n <= n_steps[..., None])
    return xp.min(xp.where(decided, xp.abs(stat - threshold), xp.inf), axis=-1)


def one_hot(xp, n_steps, K, dtype, margin_):
    """The Halting of a rule whose output is the state at step N alone (fixed, converge)."""
    weights = (steps(xp, K, dtype) == n_steps[..., None]).astype(dtype)
    ones = xp.ones(n_steps.shape, dtype=dtype)
    return Halting(weights=weights, n_steps=n_steps, remainder=ones, ponder_cost=n_steps.astype(dtype),
                   kl=xp.zeros_like(ones), margin=margin_)


def relative_change(xp, s_new, s):
    """delta = ||s_new - s|| / (||s|| + NORM_FLOOR) per token: (B, T, D) x 2 -> (B, T)."""
    return xp.sqrt(xp.sum((s_new - s) ** 2, axis=-1)) / (xp.sqrt(xp.sum(s * s, axis=-1)) + NORM_FLOOR)


__all__ = ["Halting", "HaltingRule", "NORM_FLOOR", "xp_of"]
