"""A sweep's grid: named settings x a Cartesian product x training seeds, each cell an ordinary `python -m gpu.train`
run folder, OUT/runs/NAME/seedS. The grid comes from a small TOML file, from flags, or both (flags win):

    seeds = [0, 1, 2]                    # training seeds (default 0, 1, 2)
    [base]                               # every cell: any gpu.train field, training or model, by its name
    data = "runs/tasks/addition"
    max_steps = 300
    [settings.default]                   # named settings, each a set of fields changed together
    [settings.warmup]
    min_loops_start = 4
    min_loops_warmup = 100
    [grid]                               # a Cartesian product applied to every setting (optional)
    halt = ["act", "exit_gate"]

    --base max_steps=300  --setting warmup:min_loops_start=4,min_loops_warmup=100  --set halt=act,exit_gate
    --seeds 0,1,2

A cell's name is its setting, then `key=value` for each grid field (`warmup,halt=act`). Every cell is checked (field
names, values, the schedule settings against the model) before any training starts.
"""
from __future__ import annotations

import dataclasses
import difflib
import itertools
import os
import re
from dataclasses import dataclass

from reference.config import PRESETS, LoopConfig

from ..config import RESUMABLE_CHANGES, TrainConfig, _field_types

SPEC_KEYS = ("seeds", "base", "settings", "grid")
DEFAULT_SEEDS = (0, 1, 2)


@dataclass
class Cell:
    """One run of the sweep: its setting name, seed, the gpu.train fields it sets, and its checked configs."""

    setting: str
    seed: int
    fields: dict
    tc: TrainConfig
    mc: LoopConfig

    @property
    def out(self) -> str:
        return self.tc.out

    @property
    def name(self) -> str:
        return f"{self.setting} seed {self.seed}"

    def argv(self) -> list[str]:
        """The `python -m gpu.train` options of this cell (booleans as flags)."""
        from ..tasks import option
        return [option(k, v) for k, v in self.fields.items()]


# ----------------------------------------------------------------------------- the spec
def empty_spec() -> dict:
    return dict(seeds=list(DEFAULT_SEEDS), base={}, settings={}, grid={})


def load_spec(path) -> dict:
    """The grid of a TOML file, checked: ValueError naming the file and the key that is wrong."""
    import tomllib
    with open(path, "rb") as f:
        try:
            raw = tomllib.load(f)
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{path}: not valid TOML ({err})") from None
    unknown = sorted(set(raw) - set(SPEC_KEYS))
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {unknown}; a sweep file has {list(SPEC_KEYS)}")
    spec = {**empty_spec(), **raw}
    check_spec(spec, path)
    return spec


def check_spec(spec: dict, where: str) -> None:
    """The shapes of a spec: seeds a list of ints >= 0; base a table; settings a table of tables; grid lists."""
    seeds = spec["seeds"]
    if not (isinstance(seeds, list) and seeds and all(type(s) is int and s >= 0 for s in seeds)) or \
            len(set(seeds)) < len(seeds):
        raise ValueError(f"{where}: seeds={seeds!r}: expected a list of distinct integers >= 0, e.g. [0, 1, 2]")
    if not isinstance(spec["base"], dict):
        raise ValueError(f"{where}: [base] must be a table of field = value")
    for name, fields in spec["settings"].items():
        if not isinstance(fields, dict):
            raise ValueError(f"{where}: settings.{name} must be a table of field = value")
    for key, values in spec["grid"].items():
        if not (isinstance(values, list) and values):
            raise ValueError(f"{where}: grid.{key}={values!r}: expected a non-empty list of values")


def typed(key: str, text: str):
    """A flag's text value as the type of gpu.train field `key` (ValueError naming an unknown field)."""
    kind = field_type(key)
    if kind is bool:
        if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise ValueError(f"{key}={text!r}: expected true or false")
        return text.lower() in ("true", "1", "yes")
    try:
        return kind(text)
    except ValueError:
        raise ValueError(f"{key}={text!r}: expected {kind.__name__}") from None


def field_type(key: str) -> type:
    types = _field_types()
    if key not in types:
        near = difflib.get_close_matches(key, list(types), n=1)
        raise ValueError(f"unknown field {key!r}{f' (did you mean {near[0]!r}?)' if near else ''}: a sweep sets "
                         f"gpu.train fields, listed by `python -m gpu.train --help` (with _ for -)")
    return types[key]


def pairs(items: list[str], flag: str) -> list[tuple[str, str]]:
    """['k=v', ...] -> [(k, v), ...]; ValueError naming the flag for an item without '='."""
    out = []
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise ValueError(f"{flag} {item!r}: expected FIELD=VALUE")
        out.append((key.strip().replace("-", "_"), value.strip()))
    return out


def apply_flags(spec: dict, base=(), settings=(), sets=(), seeds: str | None = None) -> dict:
    """The spec with the command line's --base k=v, --setting NAME:k=v,k=v, --set k=v1,v2 and --seeds applied."""
    spec = {k: (dict(v) if isinstance(v, dict) else v) for k, v in spec.items()}
    spec["base"].update({k: typed(k, v) for k, v in pairs(list(base), "--base")})
    for item in settings:
        name, colon, body = item.partition(":")
        if not colon or not name.strip():
            raise ValueError(f"--setting {item!r}: expected NAME:FIELD=VALUE[,FIELD=VALUE...] (or NAME: for none)")
        spec["settings"][name.strip()] = {k: typed(k, v) for k, v in pairs([p for p in body.split(",") if p],
                                                                           "--setting")}
    for key, values in pairs(list(sets), "--set"):
        spec["grid"][key] = [typed(key, v) for v in values.split(",") if v.strip()]
    if seeds is not None:
        try:
            spec["seeds"] = [int(s) for s in seeds.split(",") if s.strip()]
        except ValueError:
            raise ValueError(f"--seeds={seeds!r}: expected a comma list of integers >= 0, e.g. 0,1,2") from None
    check_spec(spec, "the command line")
    return spec


# ----------------------------------------------------------------------------- cells
def safe(name: str) -> str:
    """A setting name as a folder name: letters, digits and . _ = , + - kept, anything else as _."""
    return re.sub(r"[^A-Za-z0-9._=,+-]", "_", name)


def cells(spec: dict, out: str) -> list[Cell]:
    """Every cell of the grid, in order (setting, grid product, seed), each checked; ValueError naming the cell."""
    settings = spec["settings"] or {"base": {}}
    keys = list(spec["grid"])
    found = []
    for setting, fields in settings.items():
        for combo in itertools.product(*(spec["grid"][k] for k in keys)):
            name = ",".join([setting] + [f"{k}={v}" for k, v in zip(keys, combo)])
            for seed in spec["seeds"]:
                chosen = {"threads": 1, "progress": False, **spec["base"], **fields, **dict(zip(keys, combo)),
                          "seed": seed, "out": os.path.join(out, "runs", safe(name), f"seed{seed}")}
                found.append(make_cell(name, seed, chosen))
    return found


def make_cell(name: str, seed: int, fields: dict) -> Cell:
    """The cell's TrainConfig and LoopConfig, as gpu.train builds them (model fields on top of the preset, the
    vocabulary from the data's tokenizer unless set), checked like gpu.train checks them before step 1."""
    from ..data import load_manifest
    from ..probe import resolve_data
    from ..train.data import fit_vocab
    from ..train.schedule import check_schedules
    for key in fields:
        field_type(key)
    if fields.get("resume") or fields.get("overwrite") or fields.get("resume_from"):
        raise ValueError(f"sweep cell {name!r}: resume/overwrite are the sweep's business, not a field to set")
    train_names = {f.name for f in dataclasses.fields(TrainConfig)}
    try:
        tc = TrainConfig(**{k: v for k, v in fields.items() if k in train_names})
        mc = PRESETS[tc.preset].replace(**{k: v for k, v in fields.items() if k not in train_names})
        mc = fit_vocab(mc, set(fields), int(load_manifest(resolve_data(tc.data))["vocab_size"]))
        check_schedules(tc, mc)
    except (ValueError, FileNotFoundError) as err:
        raise ValueError(f"sweep cell {name!r}: {err}") from None
    return Cell(name, seed, fields, tc, mc)


# ----------------------------------------------------------------------------- a cell's run folder
def cell_state(cell: Cell) -> str:
    """'new' (nothing to resume), 'partial' (started: resume it), 'broken' (checkpoints, none intact: restart it) or
    'done' (the last eval and checkpoint are at max_steps). ValueError when the folder holds a run whose settings
    differ in anything but what a resume may change (gpu.config.RESUMABLE_CHANGES)."""
    from .. import checkpoint as ckpt
    from ..train.rundir import saved_configs
    from .iso_flop import eval_curve
    if not os.path.isfile(os.path.join(cell.out, "config.json")):
        return "new"
    saved_tc, saved_mc = saved_configs(cell.out)
    diffs = [f"{k}: run has {getattr(saved_tc, k)!r}, the sweep {getattr(cell.tc, k)!r}"
             for k in cell.tc.to_dict() if k not in RESUMABLE_CHANGES and getattr(saved_tc, k) != getattr(cell.tc, k)]
    diffs += [f"{k}: run has {v!r}, the sweep {getattr(cell.mc, k)!r}"
              for k, v in saved_mc.to_dict().items() if v != getattr(cell.mc, k)]
    if diffs:
        raise ValueError(f"{cell.out!r} holds a run with other settings ({'; '.join(diffs[:3])}): remove it, or "
                         f"give the sweep another --out")
    steps = [ckpt.step_of(p) for p in ckpt.list_checkpoints(cell.out)]
    evals = eval_curve(cell.out) if os.path.isfile(os.path.join(cell.out, "metrics.jsonl")) else []
    if evals and evals[-1]["step"] == cell.tc.max_steps and steps and steps[-1] == cell.tc.max_steps:
        return "done"
    if steps and ckpt.newest_intact(cell.out, notify=lambda message: None)[0] is None:
        return "broken"
    return "partial"
