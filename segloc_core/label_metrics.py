"""Label-quality metrics: do a segmenter's labels name places, and not image positions?

What localizes is labels that are place-specific over ~1-5 m and the same under every condition
(oracle study: semantic-scale labels stay near 0 % at 0.5 m whatever their number). These figures
say which kind a map or a model has, each beside the value a trivial labelling would get:
- `label_share_by_distance`: probability that two map points share a label, by their distance,
  against chance (sum of squared label shares). Place labels fall to chance within a few metres;
  semantic ones stay high at 5-10 m.
- `effective_labels`: exp(entropy) of the labels among a pose's points: how many labels the
  refiner can actually tell apart there.
- `cross_condition_consistency`: argmax agreement at world correspondences between a query frame
  and the mapping frame of the same place, only where the two pixel positions differ by more than
  `min_shift_px`: aligned viewpoints cannot flatter it (the shipped model's "0.80-0.90" was
  measured at nearly the same pixel).
- `positional_agreement`: argmax agreement at the same pixel between unrelated frames (> 50 m
  apart), against chance from each pair's label frequencies. A model whose labels follow image
  position scores far above chance (the shipped one: 0.34 vs 0.08).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

DISTANCE_BINS_M: tuple[tuple[float, float], ...] = (
    (0.0, 0.5), (0.5, 1.0), (1.0, 2.0), (2.0, 5.0), (5.0, 10.0), (10.0, 20.0), (20.0, 40.0))


def bin_name(lo: float, hi: float) -> str:
    return f"{lo:g}-{hi:g}m"


def label_share_by_distance(xyz: np.ndarray, labels: np.ndarray, pairs_per_bin: int = 10000,
                            seed: int = 0) -> dict[str, float]:
    """{"0-0.5m": share, ..., "chance": sum_k share_k^2} from random point pairs per distance bin:
    random anchors, each paired with a random point at that distance (KD-tree), so near bins are
    not starved. Bins beyond 2 m draw partners from a random subset of the points (the same
    distribution; a full 40 m neighbourhood holds ~10^5 points)."""
    from scipy.spatial import cKDTree

    xyz, labels = np.asarray(xyz, np.float64), np.asarray(labels, np.int64)
    rng = np.random.default_rng(seed)
    share = np.bincount(labels) / max(len(labels), 1)
    subset = rng.permutation(len(xyz))[:20000]
    trees = {False: (cKDTree(xyz), np.arange(len(xyz))), True: (cKDTree(xyz[subset]), subset)}
    out: dict[str, float] = {}
    for lo, hi in DISTANCE_BINS_M:
        tree, ids = trees[hi > 2.0]
        same, total = 0, 0
        for _ in range(10):  # draw anchors until the bin has enough pairs
            anchors = rng.choice(len(xyz), size=min(2000, len(xyz)), replace=False)
            for a, near in zip(anchors, tree.query_ball_point(xyz[anchors], hi)):
                near = ids[np.asarray(near, np.int64)]
                d = np.linalg.norm(xyz[near] - xyz[a], axis=1)
                near = near[(d >= lo) & (d < hi)]
                if len(near) == 0:
                    continue
                same += int(labels[near[rng.integers(len(near))]] == labels[a])
                total += 1
            if total >= pairs_per_bin:
                break
        out[bin_name(lo, hi)] = round(same / total, 4) if total else float("nan")
    out["chance"] = round(float(share @ share), 4)
    return out


def effective_labels(labels: np.ndarray) -> float:
    """exp(entropy) of a label set: the number of equally likely labels with the same entropy."""
    counts = np.bincount(np.asarray(labels, np.int64))
    p = counts[counts > 0] / counts.sum()
    return float(np.exp(-(p * np.log(p)).sum())) if len(p) else 0.0


def cross_condition_consistency(argmax_a: np.ndarray, argmax_b: np.ndarray, uv_a: np.ndarray,
                                uv_b: np.ndarray, full_wh: tuple[int, int],
                                min_shift_px: float = 20.0) -> tuple[float, float, int]:
    """(agreement, chance, pairs) of two frames' argmax maps (h, w) at correspondences uv_a -> uv_b
    given at the full image resolution `full_wh` (COLMAP pixels), only where the two
    full-resolution positions differ by more than `min_shift_px`. Chance = sum_k f_a(k) f_b(k) over
    the labels at those pixels: a model with 3 labels in large regions agrees often by chance."""
    far = np.linalg.norm(uv_a - uv_b, axis=1) > min_shift_px
    if not far.any():
        return float("nan"), float("nan"), 0
    la, lb = _at(argmax_a, uv_a[far], full_wh), _at(argmax_b, uv_b[far], full_wh)
    n = max(int(la.max()), int(lb.max())) + 1
    chance = float(np.bincount(la, minlength=n) @ np.bincount(lb, minlength=n)) / far.sum() ** 2
    return float(np.mean(la == lb)), chance, int(far.sum())


def _at(argmax: np.ndarray, uv_full: np.ndarray, full_wh: tuple[int, int]) -> np.ndarray:
    """Labels of a (h, w) map at full-resolution pixels (nearest)."""
    h, w = argmax.shape
    u = np.clip((uv_full[:, 0] * w / full_wh[0]).astype(np.int64), 0, w - 1)
    v = np.clip((uv_full[:, 1] * h / full_wh[1]).astype(np.int64), 0, h - 1)
    return argmax[v, u]


def positional_agreement(argmax_maps: Sequence[np.ndarray], centres: np.ndarray, K: int,
                         min_distance_m: float = 50.0, max_pairs: int = 2000,
                         seed: int = 0) -> tuple[float, float, int]:
    """(median same-pixel agreement, median chance, pairs) over random pairs of frames whose
    cameras are more than `min_distance_m` apart. Chance for a pair = sum_k f_a(k) f_b(k), the
    agreement two label maps with those frequencies would have if placed independently."""
    rng = np.random.default_rng(seed)
    n = len(argmax_maps)
    agree, chance = [], []
    for _ in range(max_pairs * 4):
        if len(agree) >= max_pairs or n < 2:
            break
        i, j = rng.integers(n, size=2)
        if np.linalg.norm(centres[i] - centres[j]) <= min_distance_m:
            continue
        a, b = argmax_maps[i], argmax_maps[j]
        agree.append(float(np.mean(a == b)))
        fa = np.bincount(a.ravel(), minlength=K) / a.size
        fb = np.bincount(b.ravel(), minlength=K) / b.size
        chance.append(float(fa @ fb))
    if not agree:
        return float("nan"), float("nan"), 0
    return float(np.median(agree)), float(np.median(chance)), len(agree)
