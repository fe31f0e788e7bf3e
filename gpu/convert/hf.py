"""HF transformers' `LlamaForCausalLM` <-> the dense adaloop model (the Llama block is one point of the family).

A Llama decoder layer is this project's pre-norm block with attention="softmax" (grouped-query heads n_kv_head),
activation="swiglu", norm="rmsnorm" with norm_eps = rms_norm_eps, rope=True with rope_base = rope_theta; the dense
model is reference.config.dense_variant: every layer a core block run once (max_loops 1, halt fixed, step scale 1).
Conventions checked numerically by tests/test_convert.py:
- RoPE: HF rotates q, k by `q cos + rotate_half(q) sin` with rotate_half(x) = [-x2, x1] over the two halves of each
  head, which is reference.ops.rope_forward's [x1 cos - x2 sin, x1 sin + x2 cos], angle t * theta^(-2i / hd).
- q/k/v: q_proj (H hd, D), k_proj and v_proj (Hkv hd, D) are the row blocks of attn.qkv.weight, in that order;
  key/value head j serves query heads j G .. j G + G - 1 (HF's repeat_kv = reference.ops.repeat_kv).
- MLP: up_proj = mlp.fc, gate_proj = mlp.gate, down_proj = mlp.proj; RMSNorm x / sqrt(mean x^2 + eps) * w before
  attention (input_layernorm = attn_norm) and MLP (post_attention_layernorm = mlp_norm), model.norm = norm_f.
- head: lm_head.weight, or the embedding when tie_word_embeddings.
"""
from __future__ import annotations

import json
import os

import numpy as np

from reference.config import LoopConfig, dense_variant

LLAMA_FIELDS = dict(attention="softmax", ffn="mlp", activation="swiglu", norm="rmsnorm", rope=True, memory="none",
                    input_injection="none")  # what a Llama layer is, in this project's config
_IGNORED = ("rotary_emb.inv_freq",)  # buffers some checkpoints carry


def block_names(cfg: LoopConfig) -> list[str]:
    """The model's blocks in the order a token passes them once: prelude.i, core.i, coda.i."""
    return ([f"prelude.{i}" for i in range(cfg.n_prelude)] + [f"core.{i}" for i in range(cfg.n_layer)]
            + [f"coda.{i}" for i in range(cfg.n_coda)])


# ----------------------------------------------------------------------------- HF config -> LoopConfig
def _rope(hf: dict) -> tuple[float, str | None]:
    """(rope theta, the rope scaling type when there is one) of transformers 4.x (rope_theta, rope_scaling) or 5.x
    (rope_parameters) configs."""
    params = hf.get("rope_parameters") or {}
    scaling = hf.get("rope_scaling") or {}
    theta = params.get("rope_theta", hf.get("rope_theta", 10000.0))
    kind = params.get("rope_type") or scaling.get("rope_type") or scaling.get("type")
    return float(theta), (None if kind in (None, "default") else kind)


def unsupported_features(hf: dict) -> list[str]:
    """What an HF config asks for that the adaloop Llama block does not compute, one phrase each."""
    D, H = hf["hidden_size"], hf["num_attention_heads"]
    found = []
    if hf.get("model_type", "llama") != "llama":
        found.append(f"model_type={hf.get('model_type')!r} (only 'llama' converts)")
    if hf.get("attention_bias"):
        found.append("attention biases (attention_bias=True)")
    if hf.get("mlp_bias"):
        found.append("MLP biases (mlp_bias=True)")
    if _rope(hf)[1]:
        found.append(f"rope scaling (rope_type={_rope(hf)[1]!r})")
    if hf.get("sliding_window") is not None:
        found.append(f"sliding-window attention (sliding_window={hf['sliding_window']})")
    if hf.get("hidden_act", "silu") != "silu":
        found.append(f"hidden_act={hf['hidden_act']!r} (the gated MLP here is silu: swiglu)")
    if hf.get("head_dim") not in (None, D // H) or D % H:
        found.append(f"head_dim={hf.get('head_dim')} != hidden_size / num_attention_heads = {D / H:g}")
    if hf.get("attention_dropout"):
        found.append(f"attention dropout ({hf['attention_dropout']})")
    return found


def config_from_hf(hf: dict, **overrides) -> LoopConfig:
    """The dense LoopConfig of an HF Llama config (a dict, as in config.json). ValueError naming every unsupported
    feature (biases, rope scaling, sliding window, another activation or head width)."""
    problems = unsupported_features(hf)
    if problems:
        raise ValueError("cannot convert this checkpoint: it uses " + "; ".join(problems)
                         + ". adaloop's Llama block has none of these")
    D, F = hf["hidden_size"], hf["intermediate_size"]
    H, Hkv = hf["num_attention_heads"], hf.get("num_key_value_heads") or hf["num_attention_heads"]
    base = LoopConfig(vocab_size=hf["vocab_size"], block_size=hf.get("max_position_embeddings", 2048), d_model=D,
                      n_head=H, n_kv_head=0 if Hkv == H else Hkv, mlp_ratio=max(1, F // D),
                      ffn_hidden=0 if F % D == 0 else F, norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
                      rope_base=_rope(hf)[0], tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
                      init_std=float(hf.get("initializer_range", 0.02)), **LLAMA_FIELDS)
    cfg = dense_variant(base, hf["num_hidden_layers"])
    return cfg.replace(**overrides) if overrides else cfg


def params_from_hf(state: dict, cfg: LoopConfig) -> dict[str, np.ndarray]:
    """adaloop params (float32 numpy) from an HF Llama state dict (name -> array or tensor). ValueError naming the
    tensors that are missing or that the conversion would drop (biases, extra layers)."""
    state = {k: _numpy(v) for k, v in state.items() if not k.endswith(_IGNORED)}
    used, out = set(), {}

    def take(name):
        if name not in state:
            raise ValueError(f"the HF checkpoint has no tensor {name!r}: is it a complete LlamaForCausalLM?")
        used.add(name)
        return state[name]

    out["embed.weight"] = take("model.embed_tokens.weight")
    for i, block in enumerate(block_names(cfg)):
        hf = f"model.layers.{i}"
        out[f"{block}.attn_norm.weight"] = take(f"{hf}.input_layernorm.weight")
        out[f"{block}.attn.qkv.weight"] = np.concatenate([take(f"{hf}.self_attn.{p}_proj.weight") for p in "qkv"])
        out[f"{block}.attn.proj.weight"] = take(f"{hf}.self_attn.o_proj.weight")
        out[f"{block}.mlp_norm.weight"] = take(f"{hf}.post_attention_layernorm.weight")
        for ours, theirs in (("fc", "up"), ("gate", "gate"), ("proj", "down")):
            out[f"{block}.mlp.{ours}.weight"] = take(f"{hf}.mlp.{theirs}_proj.weight")
    out["norm_f.weight"] = take("model.norm.weight")
    if cfg.tie_embeddings:
        used.add("lm_head.weight")  # a tied head may be stored as a copy of the embedding
    else:
        out["lm_head.weight"] = take("lm_head.weight")
    for g in range(cfg.n_groups):
        out[f"loop.{g}.step_scale"] = np.ones(cfg.d_model)
    left = sorted(set(state) - used)
    if left:
        raise ValueError(f"the HF checkpoint has tensors this conversion would drop: {', '.join(left[:6])}"
                         f"{' ...' if len(left) > 6 else ''} (biases or layers beyond num_hidden_layers)")
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in out.items()}


# ----------------------------------------------------------------------------- reading HF checkpoints
def read_hf_folder(path) -> tuple[dict, dict]:
    """(config dict, state dict of numpy arrays) of a folder written by `save_pretrained` (model.safetensors, or
    the shards a model.safetensors.index.json lists). Only safetensors: a folder with pytorch_model.bin is read by
    from_hf through transformers."""
    from safetensors.numpy import load_file
    path = os.fspath(path)
    config = _read_json(os.path.join(path, "config.json"), path)
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.isfile(index):
        files = sorted(set(_read_json(index, path)["weight_map"].values()))
    elif os.path.isfile(os.path.join(path, "model.safetensors")):
        files = ["model.safetensors"]
    else:
        raise ValueError(f"{path!r} has no model.safetensors (nor an index of shards)")
    state = {}
    for f in files:
        state.update(load_file(os.path.join(path, f)))
    return config, state


def is_hf_folder(path) -> bool:
    """A folder whose config.json names an HF model type (what save_pretrained writes)."""
    cfg = os.path.join(os.fspath(path), "config.json")
    if not os.path.isfile(cfg):
        return False
    try:
        return "model_type" in _read_json(cfg, path)
    except ValueError:
        return False


def from_hf_params(model_or_dir, **overrides) -> tuple[dict, LoopConfig]:
    """(numpy params, LoopConfig) of a live LlamaForCausalLM or a saved folder; `overrides` change config fields
    that do not change the weights (e.g. block_size)."""
    if isinstance(model_or_dir, (str, os.PathLike)):
        path = os.fspath(model_or_dir)
        if not os.path.isdir(path):
            raise ValueError(f"no HF model folder at {path!r}: pass the folder save_pretrained wrote")
        names = ("model.safetensors", "model.safetensors.index.json")
        if not any(os.path.isfile(os.path.join(path, f)) for f in names):
            from transformers import AutoModelForCausalLM  # a .bin checkpoint: let transformers read it
            return from_hf_params(AutoModelForCausalLM.from_pretrained(path), **overrides)
        hf_cfg, state = read_hf_folder(path)
    else:
        hf_cfg, state = model_or_dir.config.to_dict(), model_or_dir.state_dict()
    cfg = config_from_hf(hf_cfg, **overrides)
    return params_from_hf(state, cfg), cfg


def from_hf(model_or_dir, device=None, dtype=None, **overrides):
    """The dense LoopedTransformer (max_loops 1, halt fixed) computing what an HF LlamaForCausalLM computes, from
    the live module or a folder written by save_pretrained. dtype defaults to float32."""
    import torch

    from ..model import from_reference
    params, cfg = from_hf_params(model_or_dir, **overrides)
    return from_reference(params, cfg, device=device, dtype=dtype or torch.float32)


# ----------------------------------------------------------------------------- adaloop -> HF
def dense_blockers(params: dict, cfg: LoopConfig) -> list[str]:
    """Why this model is not a plain dense stack whose blocks each run once (empty when it is): loops, an input
    injection, memory banks, a step scale that is not exactly 1 (s + gamma (F(s) - s) is a plain block at gamma 1)."""
    found = []
    if cfg.max_loops != 1:
        found.append(f"max_loops={cfg.max_loops} (a looped model runs its core more than once)")
    for field in ("input_injection", "memory"):
        if getattr(cfg, field) != "none":
            found.append(f"{field}={getattr(cfg, field)!r} (a dense block has none)")
    for g in range(cfg.n_groups):
        scale = np.asarray(params[f"loop.{g}.step_scale"])
        if not np.all(scale == 1):
            found.append(f"loop.{g}.step_scale != 1 (max |gamma - 1| = {float(np.abs(scale - 1).max()):.3g}; a "
                         f"dense block adds its full update)")
    return found


def hf_blockers(params: dict, cfg: LoopConfig) -> list[str]:
    """Why this model is not a Llama (empty when it is): another body, or not a dense stack (dense_blockers)."""
    found = [f"{k}={getattr(cfg, k)!r} (Llama: {v!r})" for k, v in LLAMA_FIELDS.items()
             if getattr(cfg, k) != v and k not in ("memory", "input_injection")]
    return found + dense_blockers(params, cfg)


def params_to_hf(params: dict, cfg: LoopConfig) -> dict[str, np.ndarray]:
    """The HF LlamaForCausalLM state dict (numpy) of dense adaloop params; ValueError listing hf_blockers."""
    problems = hf_blockers(params, cfg)
    if problems:
        raise ValueError("this model has no Llama form: " + "; ".join(problems))
    D, hd, Hkv = cfg.d_model, cfg.head_dim, cfg.kv_heads
    out = {"model.embed_tokens.weight": params["embed.weight"], "model.norm.weight": params["norm_f.weight"]}
    for i, block in enumerate(block_names(cfg)):
        hf = f"model.layers.{i}"
        q, k, v = np.split(np.asarray(params[f"{block}.attn.qkv.weight"]), [D, D + Hkv * hd])
        out.update({f"{hf}.self_attn.q_proj.weight": q, f"{hf}.self_attn.k_proj.weight": k,
                    f"{hf}.self_attn.v_proj.weight": v,
                    f"{hf}.self_attn.o_proj.weight": params[f"{block}.attn.proj.weight"],
                    f"{hf}.input_layernorm.weight": params[f"{block}.attn_norm.weight"],
                    f"{hf}.post_attention_layernorm.weight": params[f"{block}.mlp_norm.weight"],
                    f"{hf}.mlp.up_proj.weight": params[f"{block}.mlp.fc.weight"],
                    f"{hf}.mlp.gate_proj.weight": params[f"{block}.mlp.gate.weight"],
                    f"{hf}.mlp.down_proj.weight": params[f"{block}.mlp.proj.weight"]})
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = params["lm_head.weight"]
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in out.items()}


def hf_config(cfg: LoopConfig):
    """transformers.LlamaConfig of a dense adaloop config."""
    from transformers import LlamaConfig
    n_layers = cfg.n_prelude + cfg.n_layer + cfg.n_coda
    return LlamaConfig(vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.ffn_width,
                       num_hidden_layers=n_layers, num_attention_heads=cfg.n_head, num_key_value_heads=cfg.kv_heads,
                       max_position_embeddings=cfg.block_size, rms_norm_eps=cfg.norm_eps, rope_theta=cfg.rope_base,
                       tie_word_embeddings=cfg.tie_embeddings, initializer_range=cfg.init_std, hidden_act="silu",
                       attention_bias=False, mlp_bias=False, architectures=["LlamaForCausalLM"])


def save_hf(params: dict, cfg: LoopConfig, out_dir, overwrite: bool = False, tokenizer: str | None = None) -> str:
    """Write a folder `LlamaForCausalLM.from_pretrained` reads: config.json, model.safetensors (and a copy of the
    tokenizer.json file `tokenizer`, if given), all or nothing (reference.files.atomic_folder). Returns it."""
    import shutil

    from safetensors.numpy import save

    from reference.files import atomic_folder, atomic_write_bytes, atomic_write_json
    state = params_to_hf(params, cfg)  # raises before anything is written
    config = json.loads(hf_config(cfg).to_json_string())
    with atomic_folder(out_dir, overwrite) as tmp:
        atomic_write_bytes(os.path.join(tmp, "model.safetensors"), save(state, metadata={"format": "pt"}))
        atomic_write_json(os.path.join(tmp, "config.json"), config)
        if tokenizer:
            shutil.copyfile(tokenizer, os.path.join(tmp, "tokenizer.json"))
    return os.fspath(out_dir)


def to_hf(module, out_dir, overwrite: bool = False) -> str:
    """Write a dense LoopedTransformer as an HF Llama folder (config.json, model.safetensors); ValueError naming
    what has no Llama form (loops, injection, other bodies, a step scale != 1)."""
    return save_hf(module.to_reference(), module.cfg, out_dir, overwrite)


def _numpy(v):
    if hasattr(v, "detach"):  # a torch tensor (bf16/fp16 come back as float32)
        v = v.detach().cpu()
        return v.float().numpy() if v.dtype.is_floating_point and v.element_size() < 4 else v.numpy()
    return np.asarray(v)


def _read_json(path, folder):
    from ..cli import read_json
    if not os.path.isfile(path):
        raise ValueError(f"{folder!r} has no {os.path.basename(path)}: pass a folder written by save_pretrained")
    return read_json(path, "re-save the model with save_pretrained")
