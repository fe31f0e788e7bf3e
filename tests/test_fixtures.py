"""Files written before the component refactor (commit 1399fe0) still load and compute the same numbers."""
import os

import numpy as np
import pytest
import torch

from gpu import checkpoint as ckpt
from gpu.model import from_reference
from reference import forward, init_params
from reference.weights import load_params

HERE = os.path.join(os.path.dirname(__file__), "fixtures", "main-1399fe0")
NAMES = ["act-rope", "pondernet-layernorm"]


@pytest.mark.parametrize("name", NAMES)
def test_old_weights_load_and_compute_the_same_logits(name):
    params, cfg = load_params(os.path.join(HERE, f"weights-{name}.safetensors"))
    tokens = np.load(os.path.join(HERE, "tokens.npy"))
    logits, aux = forward({k: v.astype(np.float64) for k, v in params.items()}, tokens, cfg)
    np.testing.assert_allclose(logits, np.load(os.path.join(HERE, f"logits-{name}.npy")), rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(aux["n_steps"], np.load(os.path.join(HERE, f"nsteps-{name}.npy")))


@pytest.mark.parametrize("name", NAMES)
def test_init_params_draws_the_same_weights_as_before(name):
    params, cfg = load_params(os.path.join(HERE, f"weights-{name}.safetensors"))
    fresh = init_params(cfg, seed=3)
    assert set(fresh) == set(params)
    for key in params:
        np.testing.assert_array_equal(fresh[key], params[key], err_msg=key)


def test_old_run_folder_checkpoint_loads_into_the_torch_model():
    params, cfg, optimizer_state, state = ckpt.load_checkpoint(ckpt.latest_checkpoint(os.path.join(HERE, "run")))
    assert state["step"] == 3 and "state" in optimizer_state
    model = from_reference({k: v.astype(np.float64) for k, v in params.items()}, cfg)
    logits, _, _ = model(torch.from_numpy(np.load(os.path.join(HERE, "tokens.npy"))))
    np.testing.assert_allclose(logits.detach().numpy(), np.load(os.path.join(HERE, "logits-run.npy")),
                               rtol=1e-12, atol=1e-12)
