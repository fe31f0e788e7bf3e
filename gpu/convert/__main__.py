"""Convert models: HF Llama checkpoints in and out, and dense models retrofitted into looped ones.

    python -m gpu.convert from-hf HF_DIR OUT
    python -m gpu.convert to-hf SRC HF_DIR
    python -m gpu.convert retrofit SRC OUT --prelude 2 --core 2:6 --coda 2 --max-loops 4 --halt act

SRC: an HF Llama folder, a gpu.train run folder, a folder written by this command, or a .safetensors file.
OUT: an adaloop model folder (model.safetensors with its config, config.json, tokenizer.json when the source has
one), read by gpu.model.load(OUT/model.safetensors) and by training's --init-from OUT.
Layer specs: a count N (prelude: the first N layers; core: the N after the prelude; coda: the last N) or a slice
I:J of the dense layers (retrofitting recurrence drops the layers no part names).
"""
from __future__ import annotations

import os
import sys

from reference.accounting import param_counts
from reference.config import HALT_MODES, LOOP_SCOPES

from ..cli import check_int, command_parser, run_command
from .hf import block_names, save_hf
from .retrofit import parse_layers, recipe, retrofit
from .source import read_source, write_model_folder


def build_parser():
    ap, sub = command_parser("python -m gpu.convert", __doc__)
    p = sub.add_parser("from-hf", help="HF LlamaForCausalLM folder -> adaloop model folder (dense)")
    p.add_argument("src", help="folder written by save_pretrained")
    p.add_argument("out", help="adaloop model folder to write")
    p.add_argument("--block-size", type=int, default=None, help="context length (default: max_position_embeddings)")
    p = sub.add_parser("to-hf", help="dense adaloop model -> HF Llama folder")
    p.add_argument("src", help="run folder, adaloop model folder or .safetensors file")
    p.add_argument("out", help="folder for config.json + model.safetensors")
    p = sub.add_parser("retrofit", help="dense model -> looped model (prelude / core / coda from its layers)")
    p.add_argument("src", help="HF Llama folder, run folder, adaloop model folder or .safetensors file (dense)")
    p.add_argument("out", help="adaloop model folder to write")
    p.add_argument("--prelude", default="0", help="count N or slice I:J of the dense layers (default 0)")
    p.add_argument("--core", required=True, help="count N (the layers after the prelude) or slice I:J")
    p.add_argument("--coda", default="0", help="count N (the last N layers) or slice I:J (default 0)")
    p.add_argument("--max-loops", type=int, default=4)
    p.add_argument("--halt", default="fixed", choices=HALT_MODES)
    p.add_argument("--injection", default="none", choices=["none", "concat"], help="input injection (concat starts "
                                                                                    "at [I 0])")
    p.add_argument("--loop-scope", default="stack", choices=LOOP_SCOPES)
    p.add_argument("--seed", type=int, default=0, help="seed of the halting unit's init")
    for q in sub.choices.values():
        q.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    return ap


def run(a) -> str:
    """Do the conversion `a` asks for; the line to print."""
    src = read_source(a.src)
    if a.cmd == "from-hf":
        if src.kind != "hf":
            raise ValueError(f"{a.src!r} is not an HF model folder (no config.json with a model_type): from-hf reads "
                             f"what save_pretrained writes")
        cfg = src.cfg
        if a.block_size is not None:
            check_int("--block-size", a.block_size, 1)
            cfg = cfg.replace(block_size=a.block_size)
        write_model_folder(a.out, src.params, cfg, os.path.abspath(a.src), {"kind": "from-hf"}, src.tokenizer,
                           a.overwrite)
        return f"wrote {a.out}: dense {len(block_names(cfg))}-layer model, {param_counts(cfg)['unique']:,} parameters"
    if a.cmd == "to-hf":
        save_hf(src.params, src.cfg, a.out, a.overwrite, src.tokenizer)
        return f"wrote {a.out}: LlamaForCausalLM with {len(block_names(src.cfg))} layers"
    check_int("--max-loops", a.max_loops, 1)
    check_int("--seed", a.seed, 0)
    n = len(block_names(src.cfg))
    prelude = parse_layers(a.prelude, n, "prelude")
    core = parse_layers(a.core, n, "core", start=prelude[-1] + 1 if prelude else 0)
    coda = parse_layers(a.coda, n, "coda")
    params, cfg = retrofit(src.params, src.cfg, prelude, core, coda, a.max_loops, a.halt, a.seed,
                           input_injection=a.injection, loop_scope=a.loop_scope)
    write_model_folder(a.out, params, cfg, os.path.abspath(a.src), recipe(prelude, core, coda, cfg), src.tokenizer,
                       a.overwrite)
    return (f"wrote {a.out}: prelude {prelude}, core {core} looped up to {cfg.max_loops} times (halt={cfg.halt}), "
            f"coda {coda} of the {n} dense layers; {param_counts(cfg)['unique']:,} parameters")


def main(argv=None) -> int:
    """`python -m gpu.convert COMMAND ...`: 0 on success, 2 on bad input (the message names the fix)."""
    a = build_parser().parse_args(argv)
    return run_command(lambda: run(a), print)


if __name__ == "__main__":
    sys.exit(main())
