"""`gpu.eval`: adaloop models in EleutherAI's lm-evaluation-harness (docs/evaluation.md).

    python -m gpu.eval --model adaloop --model_args run=runs/tiny --tasks adaloop_bundled

`gpu/eval/harness.py` registers the model `adaloop` in the harness's model registry when imported (it needs
`pip install -e '.[eval]'`); `python -m gpu.eval` imports it, adds this package's task folder to --include_path and
runs the harness's own command line. `gpu/eval/tasks/` ships offline tasks on the bundled validation split.
"""
import os

TASKS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tasks")
