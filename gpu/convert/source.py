"""Where converted weights come from and go: read any model source, write an adaloop model folder, and the
`--init-from` reader (load_init) that training calls.

Sources (read_source): an HF Llama folder (save_pretrained's config.json + model.safetensors), a `gpu.train` run
folder (its newest checkpoint), an adaloop model folder (what `python -m gpu.convert from-hf` / `retrofit` write), a
checkpoint folder, or a .safetensors file in the reference's weight format (reference.weights).

An adaloop model folder holds model.safetensors (the weights, with the LoopConfig in its metadata: readable by
gpu.model.load and reference.weights.load_params), config.json ({"model": the LoopConfig, "source": ...,
"recipe": how it was made}) and, when the source had one, tokenizer.json.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass

import numpy as np

from reference.config import LoopConfig
from reference.files import atomic_folder, atomic_write_json
from reference.model import check_params
from reference.weights import load_params, save_params

from .hf import from_hf_params, is_hf_folder

# What each block and the head compute: a file and a training config must agree on these (shapes alone would not
# catch n_head, the activation, the norm epsilon or the RoPE base). The loop's knobs (max_loops, min_loops, the
# halting rule and its thresholds and penalties, truncated backprop, init scales) may change when training continues;
# a change that adds or removes parameters (a halting unit, loop groups) is caught by the shape check.
ARCHITECTURE_FIELDS = ("vocab_size", "d_model", "n_head", "kv_heads", "ffn_width", "n_prelude", "n_layer", "n_coda",
                       "attention", "ffn", "activation", "norm", "norm_eps", "rope", "rope_base", "tie_embeddings",
                       "n_experts", "moe_top_k", "moe_expert_size", "memory", "memory_local_slots",
                       "memory_global_slots", "input_injection")


@dataclass
class Source:
    params: dict            # name -> float32 numpy array
    cfg: LoopConfig
    kind: str               # hf | run | model
    path: str
    tokenizer: str | None   # a tokenizer.json that goes with the weights, if known


def _beside(folder, name="tokenizer.json"):
    path = os.path.join(folder, name)
    return path if os.path.isfile(path) else None


def read_source(path, data: str | None = None) -> Source:
    """The weights and config at `path` (see the module docstring for what it may be); data: the data folder of a
    run whose own one moved. ValueError naming the fix for anything else."""
    path = os.fspath(path)
    if os.path.isfile(path):
        params, cfg = load_params(path)
        return Source(params, cfg, "model", path, _beside(os.path.dirname(path) or "."))
    if not os.path.isdir(path):
        raise ValueError(f"no model at {path!r}: pass an HF Llama folder, a gpu.train run folder, a folder written "
                         f"by `python -m gpu.convert`, or a .safetensors file")
    if is_hf_folder(path):
        params, cfg = from_hf_params(path)
        return Source(params, cfg, "hf", path, _beside(path))
    config = os.path.join(path, "config.json")
    if os.path.isfile(config) and "train" in _json(config):
        from ..probe import load_run
        run = load_run(path, data)
        return Source(run.params, run.cfg, "run", path, _beside(run.data_dir))
    if os.path.isfile(os.path.join(path, "model.safetensors")):
        params, cfg = load_params(os.path.join(path, "model.safetensors"))
        return Source(params, cfg, "model", path, _beside(path))
    raise ValueError(f"{path!r} holds no model: expected config.json + model.safetensors (an HF or adaloop model "
                     f"folder), or a gpu.train run folder")


def write_model_folder(out, params: dict, cfg: LoopConfig, source: str, recipe: dict | None = None,
                       tokenizer: str | None = None, overwrite: bool = False) -> str:
    """Write an adaloop model folder, all or nothing (FileExistsError for an existing `out` unless overwrite)."""
    check_params(params, cfg)
    with atomic_folder(out, overwrite) as tmp:
        save_params(os.path.join(tmp, "model.safetensors"), params, cfg)
        atomic_write_json(os.path.join(tmp, "config.json"),
                          {"model": cfg.to_dict(), "source": source, "recipe": recipe or {}})
        if tokenizer:
            shutil.copyfile(tokenizer, os.path.join(tmp, "tokenizer.json"))
    return os.fspath(out)


def architecture_mismatches(file_cfg: LoopConfig, cfg: LoopConfig) -> list[str]:
    """ARCHITECTURE_FIELDS on which two configs differ, as 'field: file X, config Y'."""
    return [f"{f}: file {getattr(file_cfg, f)!r}, config {getattr(cfg, f)!r}" for f in ARCHITECTURE_FIELDS
            if getattr(file_cfg, f) != getattr(cfg, f)]


def init_config(path) -> LoopConfig:
    """The LoopConfig stored with the weights at `path` (what `--init-from PATH` should train, with the loop's knobs
    free to change: LoopConfig.replace)."""
    return read_source(path).cfg


def load_init(path, cfg: LoopConfig) -> dict[str, np.ndarray]:
    """Initial weights for training `cfg` from `path` (any read_source source: a retrofit or from-hf output, an HF
    Llama folder, a run): float32 numpy params, name -> array, checked against cfg. ValueError listing every
    architecture field that differs (ARCHITECTURE_FIELDS) and every missing, unexpected or mis-shaped tensor."""
    src = read_source(path)
    problems = architecture_mismatches(src.cfg, cfg)
    if problems:
        raise ValueError(f"--init-from {path!r} does not fit the model config: " + "; ".join(problems)
                         + ". Build the config from the file (gpu.convert.init_config) and change only the loop's "
                           "knobs (max_loops, halting thresholds, penalties)")
    check_params(src.params, cfg)
    return {k: np.asarray(v, dtype=np.float32) for k, v in src.params.items()}


def _json(path):
    from ..cli import read_json
    return read_json(path)
