"""The inverse of a layer's input Gram matrix, as error-compensating rounding uses it.

Rounding the rows of a weight in order and pushing each row's error onto the
rows not yet rounded through ``H^-1`` (``H = X^T X`` of the layer's inputs)
keeps the layer's outputs, not its weights, close: GPTQ-style INT4 weights and
error-compensated codebook indices both need the upper Cholesky factor of ``H^-1``.
"""

from __future__ import annotations

import numpy as np

DAMPING = 0.01  # added to H's diagonal, as a fraction of its mean, before inverting


def inverse_cholesky_upper(hessian: np.ndarray, damping: float = DAMPING) -> np.ndarray:
    """The upper Cholesky factor of ``(hessian + damping * mean(diag) * I)^-1``, damping more until it is positive definite.

    ``hessian`` is not modified.
    """
    hessian = np.array(hessian, np.float64)
    hessian[np.diag_indices(len(hessian))] += damping * float(np.mean(np.diag(hessian)))
    extra = 0.0
    for _ in range(6):
        try:
            lower = np.linalg.cholesky(hessian + extra * np.eye(len(hessian)))
            inverse = np.linalg.inv(lower)
            return np.linalg.cholesky(inverse.T @ inverse).T
        except np.linalg.LinAlgError:
            extra = max(extra * 10.0, 1e-6 * float(np.mean(np.diag(hessian))) or 1e-6)
    raise np.linalg.LinAlgError("the inputs' Gram matrix could not be inverted")
