"""RoPE's angles themselves (issue 10, "test gaps"): angle[t, i] = t * base^(-2i / head_dim), i = 0 .. head_dim/2 - 1.

The other RoPE tests check rotation, invertibility and relative position, which any frequencies satisfy; here the
tables of both backends are compared with the angles computed independently, one by one with math.pow / math.cos,
and rope_forward is checked to rotate the pair (x_i, x_{i + head_dim/2}) by exactly that angle.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gpu import layers as L
from reference import ops

CASES = [(7, 8, 10000.0), (16, 4, 100.0), (64, 32, 10000.0), (5, 2, 500000.0), (12, 6, 3.5)]


def expected_tables(T, head_dim, base):
    """cos, sin (T, head_dim/2) of t * base^(-2i / head_dim), element by element in Python floats."""
    cos = np.empty((T, head_dim // 2))
    sin = np.empty((T, head_dim // 2))
    for t in range(T):
        for i in range(head_dim // 2):
            angle = t * math.pow(base, -2.0 * i / head_dim)
            cos[t, i], sin[t, i] = math.cos(angle), math.sin(angle)
    return cos, sin


@pytest.mark.parametrize("T,head_dim,base", CASES)
def test_reference_rope_tables_are_the_angles(T, head_dim, base):
    cos, sin = ops.rope_tables(T, head_dim, base, np, np.float64)
    e_cos, e_sin = expected_tables(T, head_dim, base)
    assert cos.shape == sin.shape == (T, head_dim // 2) and cos.dtype == sin.dtype == np.float64
    np.testing.assert_allclose(cos, e_cos, rtol=0, atol=1e-12)
    np.testing.assert_allclose(sin, e_sin, rtol=0, atol=1e-12)
    cos32, sin32 = ops.rope_tables(T, head_dim, base, np, np.float32)  # computed in float64, then rounded
    assert cos32.dtype == sin32.dtype == np.float32
    np.testing.assert_array_equal(cos32, cos.astype(np.float32))
    np.testing.assert_array_equal(sin32, sin.astype(np.float32))


@pytest.mark.parametrize("T,head_dim,base", CASES)
def test_equivalence_torch_rope_tables_are_the_angles(T, head_dim, base):
    cos, sin = L.rope_tables(T, head_dim, base)
    e_cos, e_sin = expected_tables(T, head_dim, base)
    assert tuple(cos.shape) == tuple(sin.shape) == (T, head_dim // 2)
    assert cos.dtype == sin.dtype == torch.float64
    np.testing.assert_allclose(cos.numpy(), e_cos, rtol=0, atol=1e-12)
    np.testing.assert_allclose(sin.numpy(), e_sin, rtol=0, atol=1e-12)


@pytest.mark.parametrize("T,head_dim,base", CASES[:3])
def test_equivalence_rope_forward_rotates_each_pair_by_its_angle(T, head_dim, base):
    """A unit vector on x_i (resp. x_{i+half}) at position t comes out as (cos a, sin a) (resp. (-sin a, cos a))
    on the pair (i, i + half), a = t * base^(-2i/head_dim), in both backends."""
    half = head_dim // 2
    e_cos, e_sin = expected_tables(T, head_dim, base)
    x = np.zeros((1, head_dim, T, head_dim))  # (B, H, T, hd): "head" j holds the unit vector e_j at every t
    for j in range(head_dim):
        x[0, j, :, j] = 1.0
    cos, sin = ops.rope_tables(T, head_dim, base, np, np.float64)
    outs = [ops.rope_forward(x, cos, sin),
            L.rope(torch.from_numpy(x), *L.rope_tables(T, head_dim, base)).numpy()]
    for y in outs:
        for i in range(half):
            np.testing.assert_allclose(y[0, i, :, i], e_cos[:, i], atol=1e-12)          # e_i -> cos a e_i
            np.testing.assert_allclose(y[0, i, :, i + half], e_sin[:, i], atol=1e-12)   #        + sin a e_{i+half}
            np.testing.assert_allclose(y[0, i + half, :, i], -e_sin[:, i], atol=1e-12)  # e_{i+half} -> -sin a e_i
            np.testing.assert_allclose(y[0, i + half, :, i + half], e_cos[:, i], atol=1e-12)
        others = np.ones_like(y, dtype=bool)
        for j in range(head_dim):
            partner = (j + half) % head_dim
            others[0, j, :, j] = others[0, j, :, partner] = False
        assert np.all(y[others] == 0), "rope_forward mixed coordinates outside the pair (i, i + head_dim/2)"
