"""`gpu.convert`: HF Llama checkpoints in and out, retrofitting a dense model into a looped one, and the
`--init-from` reader.

    python -m gpu.convert from-hf HF_DIR OUT            # LlamaForCausalLM folder -> adaloop model folder (dense)
    python -m gpu.convert to-hf SRC HF_DIR              # dense adaloop model (run, folder, file) -> Llama folder
    python -m gpu.convert retrofit SRC OUT --prelude 2 --core 2:6 --coda 2 --max-loops 4 --halt act

Library: `from_hf(model_or_dir) -> LoopedTransformer`, `to_hf(module, dir)`, `retrofit(params, cfg, ...)`, and for
training `init_config(path)` / `load_init(path, cfg)` (gpu/convert/source.py).
"""
from .hf import (block_names, config_from_hf, dense_blockers, from_hf, from_hf_params, hf_blockers, hf_config,
                 params_from_hf, params_to_hf, save_hf, to_hf, unsupported_features)
from .retrofit import parse_layers, retrofit
from .source import Source, init_config, load_init, read_source, write_model_folder

__all__ = ["block_names", "config_from_hf", "dense_blockers", "from_hf", "from_hf_params", "hf_blockers", "hf_config",
           "params_from_hf", "params_to_hf", "save_hf", "to_hf", "unsupported_features", "parse_layers", "retrofit",
           "Source", "init_config", "load_init", "read_source", "write_model_folder"]
