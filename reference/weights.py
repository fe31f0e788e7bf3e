"""One weight format for both backends: safetensors, with the LoopConfig in the file's metadata."""
from __future__ import annotations

import json
import os

import numpy as np

from .config import LoopConfig
from .files import atomic_write_bytes
from .model import check_params


def save_params(path, params: dict, cfg: LoopConfig) -> None:
    """Save numpy params (checked against cfg) and the config to a .safetensors file, atomically."""
    from safetensors.numpy import save
    check_params(params, cfg)
    tensors = {k: np.ascontiguousarray(np.asarray(v)) for k, v in params.items()}
    atomic_write_bytes(path, save(tensors, metadata={"adaloop_config": json.dumps(cfg.to_dict())}))


def load_params(path, cfg: LoopConfig | None = None) -> tuple[dict, LoopConfig]:
    """(params, config) from a .safetensors file. With cfg given, the file must match it: a ValueError lists
    every missing, unexpected or mis-shaped tensor. Without, the config stored in the file is used."""
    from safetensors import SafetensorError
    from safetensors.numpy import load
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"no weight file at {path!r}")
    with open(path, "rb") as f:
        data = f.read()
    try:
        params = load(data)
        header_len = int.from_bytes(data[:8], "little")
        metadata = json.loads(data[8:8 + header_len]).get("__metadata__", {})
    except (SafetensorError, ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"{path!r} is not a readable safetensors file ({err}); it may be truncated or corrupted: "
                         f"re-save it or load an earlier checkpoint") from None
    if cfg is None:
        if "adaloop_config" not in metadata:
            raise ValueError(f"{path!r} carries no adaloop config: pass the LoopConfig it was saved with")
        cfg = LoopConfig.from_dict(json.loads(metadata["adaloop_config"]))
    check_params(params, cfg)
    return params, cfg
