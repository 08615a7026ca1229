"""Per-pixel reductions over the K class channels that make the refiner's cost independent of K.

With r = p(x) - e_y the residual of a labeled point and p(x) bilinearly interpolated between the
four pixel centres around x, |r|^2 = sum_k p_k(x)^2 - 2 p_y(x) + 1. The first term, its gradient and
the Gauss-Newton tensor sum_k grad p_k grad p_k^T are quadratic forms in the 4x4 Gram matrix of the
four corner probability vectors, <p(c), p(c')> = sum_k p_k(c) p_k(c'). So a few per-pixel inner
products with the neighbours, computed once per frame (by the network graph, on the GPU), give the
refiner the *exact* cost, gradient and Hessian of the K-dimensional residual: an iteration samples
these channels plus channel y per point, O(N) whatever K. (Interpolating sum_k p_k^2 itself would
not do: it is not the square of the interpolated p, and its minimum pulls points onto pixel centres.)

This numpy function is the reference; the network's ONNX graph outputs exactly these channels in
this order, parity-tested against it. For probs p (K, H, W) in [0, 1] (uint8 input is dequantized as
p = q / 255), with <a, b> = sum_k p_k[a] p_k[b] and 0 where the neighbour falls outside the image:
- sum_sq[i, j]         = <(i, j), (i, j)>
- max_prob[i, j]       = max_k p_k[i, j]   (with p_y it tells whether y is the argmax: p_y >= max_prob)
- dot_right[i, j]      = <(i, j), (i, j+1)>
- dot_down[i, j]       = <(i, j), (i+1, j)>
- dot_down_right[i, j] = <(i, j), (i+1, j+1)>
- dot_down_left[i, j]  = <(i, j), (i+1, j-1)>
"""

from __future__ import annotations

import numpy as np

from segloc_core.errors import InputError

REDUCTION_NAMES: tuple[str, ...] = ("sum_sq", "max_prob", "dot_right", "dot_down", "dot_down_right",
                                    "dot_down_left")


def dequantize(probs: np.ndarray) -> np.ndarray:
    """float32 probabilities from float32 or uint8 (p*255) maps."""
    if probs.dtype == np.uint8:
        return probs.astype(np.float32) * np.float32(1.0 / 255.0)
    if probs.dtype != np.float32:
        raise InputError(f"probability maps must be float32 or uint8 (p*255), got {probs.dtype}")
    return probs


def level_reductions(probs: np.ndarray) -> np.ndarray:
    """(K, H, W) float32 or uint8 probabilities -> (len(REDUCTION_NAMES), H, W) float32 reductions."""
    probs = np.asarray(probs)
    if probs.ndim != 3 or min(probs.shape) < 1:
        raise InputError(f"probability maps must be (K, H, W), got shape {probs.shape}")
    p = dequantize(probs)
    out = np.zeros((len(REDUCTION_NAMES),) + p.shape[1:], dtype=np.float32)
    np.einsum("khw,khw->hw", p, p, out=out[0])
    np.max(p, axis=0, out=out[1])
    np.einsum("khw,khw->hw", p[:, :, :-1], p[:, :, 1:], out=out[2, :, :-1])
    np.einsum("khw,khw->hw", p[:, :-1], p[:, 1:], out=out[3, :-1])
    np.einsum("khw,khw->hw", p[:, :-1, :-1], p[:, 1:, 1:], out=out[4, :-1, :-1])
    np.einsum("khw,khw->hw", p[:, :-1, 1:], p[:, 1:, :-1], out=out[5, :-1, 1:])
    return out
