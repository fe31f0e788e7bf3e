"""adaloop's numpy reference of the adaptive looped transformer: the spec every backend is checked against."""
from .config import PRESETS, LoopConfig, get_preset
from .model import check_params, forward, forward_backward, init_params, loss, loss_and_grads, param_shapes

__all__ = ["LoopConfig", "PRESETS", "get_preset", "init_params", "forward", "forward_backward", "loss",
           "loss_and_grads", "param_shapes", "check_params"]
