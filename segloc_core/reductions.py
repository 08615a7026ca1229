"""Per-pixel reductions over the K class channels that make the refiner's cost independent of K.

With r = p(x) - e_y the residual of a labeled point, |r|^2 = S(x) - 2 p_y(x) + 1 where
S = sum_k p_k^2, and its Gauss-Newton Hessian needs G = sum_k grad p_k grad p_k^T (2x2, symmetric).
S, G and max_k p_k are one pass over K x H x W per frame: the segmentation graph computes them
(on the GPU) and the refiner then samples a few channels plus channel y per point and iteration.

This numpy function is the reference; the network's ONNX graph outputs exactly these channels in
this order, parity-tested against it. Definitions, for probs p (K, H, W) with values in [0, 1]
(uint8 input is dequantized as p = q / 255):
- sum_sq   = sum_k p_k^2
- max_prob = max_k p_k (with p_y it tells whether y is the argmax: p_y >= max_prob)
- grad_uu, grad_uv, grad_vv = sum_k gu_k gu_k, sum_k gu_k gv_k, sum_k gv_k gv_k, where gu, gv are
  central differences along W (u) and H (v) in per-pixel units on the edge-replicated image:
  gu[i, j] = (p[i, min(j+1, W-1)] - p[i, max(j-1, 0)]) / 2, likewise gv along i.
"""

from __future__ import annotations

import numpy as np

from segloc_core.errors import InputError

REDUCTION_NAMES: tuple[str, ...] = ("sum_sq", "max_prob", "grad_uu", "grad_uv", "grad_vv")


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
    pad = np.pad(p, ((0, 0), (1, 1), (1, 1)), mode="edge")
    gu = (pad[:, 1:-1, 2:] - pad[:, 1:-1, :-2]) * np.float32(0.5)
    gv = (pad[:, 2:, 1:-1] - pad[:, :-2, 1:-1]) * np.float32(0.5)
    out = np.empty((len(REDUCTION_NAMES),) + p.shape[1:], dtype=np.float32)
    np.einsum("khw,khw->hw", p, p, out=out[0])
    np.max(p, axis=0, out=out[1])
    np.einsum("khw,khw->hw", gu, gu, out=out[2])
    np.einsum("khw,khw->hw", gu, gv, out=out[3])
    np.einsum("khw,khw->hw", gv, gv, out=out[4])
    return out
