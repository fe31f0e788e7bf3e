"""`python -m gpu.experiments ablation`: the block-body x halting grid (issue 13), run as a sweep.

Each body is one config override of the mlp/softmax baseline, each halting rule one value of `halt`:

    bodies:  mlp (baseline)  moe (ffn=moe)  linear (attention=linear)  memory (memory=both)
    halting: fixed  act  exit_gate

Every cell is an ordinary run folder (OUT/runs/BODY,HALT/seedS) trained and summarized by the sweep machinery, so
the table has val loss, answer accuracy on task data, mean depth, FLOPs per token at the realized depth and tokens/s,
per seed and as mean +- sd; with --base loop_scope=layer (and n_layer > 1) also the depth of each loop group
(depth_g0 = the first core block), and the loss and depth by label (topic) in ablation_by_label.csv. A combination
the model refuses (exit_gate needs one loop group, so not with layer scope over several blocks) is left out and
named under the table's title.
"""
from __future__ import annotations

from .grid import empty_spec, make_cell, safe
from .summary import HEADLINE
from .sweep import sweep

BODIES = {"mlp": {}, "moe": {"ffn": "moe"}, "linear": {"attention": "linear"}, "memory": {"memory": "both"}}
HALTS = ("fixed", "act", "exit_gate")
COLUMNS = (*HEADLINE, *(f"depth_g{g}" for g in range(16)))


def names(spec: str, known, what: str) -> list[str]:
    """'a,b' -> ['a', 'b'], each one of `known`; ValueError naming the flag otherwise."""
    chosen = [n.strip() for n in spec.split(",") if n.strip()]
    unknown = [n for n in chosen if n not in known]
    if not chosen or unknown:
        raise ValueError(f"--{what}={spec!r}: expected a comma list of {list(known)}")
    return chosen


def ablation_spec(bodies: list[str], halts: list[str], base: dict, seeds: list[int], out: str):
    """(the sweep spec: one setting per body x halting rule the model accepts, the refused ones with the reason)."""
    spec, refused = {**empty_spec(), "base": dict(base), "seeds": list(seeds)}, []
    for body in bodies:
        for halt in halts:
            name, fields = f"{body},{halt}", {**BODIES[body], "halt": halt}
            try:
                make_cell(name, seeds[0], {**base, **fields, "out": f"{out}/runs/{safe(name)}"})
            except ValueError as err:
                refused.append(str(err))  # names the cell
                continue
            spec["settings"][name] = fields
    if not spec["settings"]:
        raise ValueError("no body x halting combination is valid with these settings: " + "; ".join(refused))
    return spec, refused


def ablation(out: str, bodies=tuple(BODIES), halts=HALTS, base: dict | None = None, seeds=(0, 1, 2), jobs: int = 1,
             windows: int = 256, where: str | None = None, measure: str | None = None, n_boot: int = 200,
             say=print) -> dict:
    """Train and summarize the body x halting grid (see the module docstring); writes OUT/analysis/ablation.*."""
    spec, refused = ablation_spec(list(bodies), list(halts), base or {}, list(seeds), out)
    note = ("Left out (the model refuses them): " + "; ".join(refused)) if refused else ""
    res = sweep(spec, out, jobs=jobs, windows=windows, where=where, measure=measure, n_boot=n_boot, say=say,
                columns=COLUMNS, name="ablation", note=note)
    return dict(res, refused=refused)
