"""Finite-difference helpers shared by the gradient tests."""

import numpy as np


def central_difference(f, variable, eps=1e-6):
    """d f / d variable by central differences, one entry at a time; leaves `variable` as it found it."""
    base = variable.numpy().copy()
    grad = np.zeros_like(base)
    for index in np.ndindex(base.shape):
        shifted = base.copy()
        shifted[index] += eps
        variable.assign(shifted)
        plus = float(f())
        shifted[index] -= 2 * eps
        variable.assign(shifted)
        minus = float(f())
        grad[index] = (plus - minus) / (2 * eps)
    variable.assign(base)
    return grad


def relative_error(a, b):
    """Norm-wise relative error between two arrays."""
    a, b = np.asarray(a), np.asarray(b)
    return np.linalg.norm(a - b) / max(np.linalg.norm(a) + np.linalg.norm(b), 1e-30)
