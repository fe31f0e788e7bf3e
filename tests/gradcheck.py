"""Finite-difference gradient checks in float64.

Directional derivatives: for random unit directions v, the central difference of f along v, refined by
Richardson extrapolation (error O(h^4)), must match <analytic gradient, v> to
    |fd - an| <= FD_RTOL * (|fd| + |an|) + FD_ATOL.
Checking along random directions covers every coordinate of a tensor at once.
"""
import numpy as np

FD_STEP = 1e-4
FD_RTOL = 1e-6
FD_ATOL = 1e-10
# Halting is a threshold decision: a perturbation can flip N(t) only if a halting statistic lies within
# about FD_STEP * |gradient| of its threshold. Draws whose margin (aux["halt_margin"]) is below this are
# the only ones excluded from gradient checks.
HALT_MARGIN = 1e-3


def directional_fd(f, x, v, h=FD_STEP):
    """Richardson-extrapolated central difference of the scalar f at x along v (x is modified and restored)."""
    x0 = x.copy()

    def central(step):
        x[...] = x0 + step * v
        fp = f()
        x[...] = x0 - step * v
        fm = f()
        x[...] = x0
        return (fp - fm) / (2 * step)

    return (4 * central(h / 2) - central(h)) / 3


def assert_grad_close(f, x, grad, rng, n_dirs=2, label=""):
    """Check <grad, v> against finite differences of f along n_dirs random unit directions v."""
    for _ in range(n_dirs):
        v = rng.standard_normal(x.shape)
        v /= np.linalg.norm(v)
        fd = directional_fd(f, x, v)
        an = float(np.sum(grad * v))
        assert abs(fd - an) <= FD_RTOL * (abs(fd) + abs(an)) + FD_ATOL, (
            f"{label}: finite difference {fd!r} vs analytic {an!r} (rel err {abs(fd - an) / (abs(fd) + abs(an)):.2e})")
