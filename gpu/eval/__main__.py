"""`python -m gpu.eval [lm_eval arguments]`: the lm-evaluation-harness command line with the `adaloop` model
registered and gpu/eval/tasks on the task path (appended to --include_path, or added when none is given).

    python -m gpu.eval --model adaloop --model_args run=runs/tiny --tasks adaloop_bundled
    python -m gpu.eval run --model adaloop --model_args run=runs/tiny,loops=8 --tasks lambada_openai hellaswag
"""
from __future__ import annotations

import sys

from . import TASKS_DIR


def with_tasks_dir(argv: list[str]) -> list[str]:
    """argv with TASKS_DIR on --include_path (colon-separated, as the harness reads it)."""
    argv = list(argv)
    for i, arg in enumerate(argv):
        if arg == "--include_path" and i + 1 < len(argv):
            argv[i + 1] = f"{argv[i + 1]}:{TASKS_DIR}"
            return argv
        if arg.startswith("--include_path="):
            argv[i] = f"{arg}:{TASKS_DIR}"
            return argv
    if argv and argv[0] in ("-h", "--help", "ls", "validate"):
        return argv
    return argv + ["--include_path", TASKS_DIR]


def main(argv=None) -> int:
    """Run the harness's CLI (lm_eval.__main__.cli_evaluate) in this process, after registering `adaloop`."""
    try:
        from lm_eval.__main__ import cli_evaluate
    except ImportError:
        print("error: lm-eval is not installed: pip install -e '.[eval]'", file=sys.stderr)
        return 2
    from . import harness  # noqa: F401  (registers the model)
    sys.argv = ["lm_eval"] + with_tasks_dir(sys.argv[1:] if argv is None else argv)
    cli_evaluate()
    return 0


if __name__ == "__main__":
    sys.exit(main())
