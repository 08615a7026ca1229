"""Place labels: each 3D point labelled by the world cell it lies in (a hash of the cell).

Why: what localizes is labels specific to 1-5 m of the world and the same under every condition
(oracle study in the ceiling issue). Two users of the one rule:
- the oracle segmenter (`segloc_core.net.oracle`, a diagnostic), which mixes the rendered material id in;
- the geometry-label model (`segloc_core.net.train_geometry`), trained to predict the labels of the
  cells its pixels see from their position alone, and whose maps take each point's label from its
  position by the same rule (`segloc_core.maps.build`). A model says which rule it learned in its
  config (`ModelConfig.place_cells`).

A label is a hash of the `cell_m` cell (mod K-1; K-1 is sky / nothing within range). Hierarchical
(`parent_cell_m > 0`): label = parent * B + child (B = K / parents), the parent a hash of the
coarser cell among `parents - 1`, the child a hash of the fine cell among B, so the refiner's coarse
levels can read the parent as `label // B`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from segloc_core.errors import InputError

_SPEC = re.compile(r"^([^,]+)(?:,([^,]+))?(?:,([^,]+))?(?:,([^,]+))?$")


@dataclass(frozen=True)
class PlaceCells:
    """cell_m: fine cell (m); K: labels (sky = K-1); parent_cell_m: coarse cell (0: flat);
    parents: parent labels (K must be a multiple); seed: salt of the hash."""

    cell_m: float = 1.0
    K: int = 100
    parent_cell_m: float = 0.0
    parents: int = 10
    seed: int = 0

    def __post_init__(self) -> None:
        if not (self.cell_m > 0 and 2 <= self.K <= 256):
            raise InputError(f"place cells: cell must be > 0 m and K in [2, 256], got {self.cell_m}, {self.K}")
        if self.hierarchical:
            if self.parents < 2 or self.K % self.parents or self.K // self.parents < 2:
                raise InputError(f"place cells: K={self.K} must be a multiple of parents={self.parents} "
                                 "with at least 2 children each")
            if self.parent_cell_m < self.cell_m:
                raise InputError(f"place cells: parent cell {self.parent_cell_m} m is finer than the "
                                 f"cell {self.cell_m} m")

    @property
    def hierarchical(self) -> bool:
        return self.parent_cell_m > 0

    @classmethod
    def parse(cls, text: str, default: PlaceCells | None = None) -> PlaceCells:
        """`CELL_M[,K[,PARENT_CELL_M[,PARENTS]]]`, missing fields from `default`."""
        d = default or cls()
        m = _SPEC.match(text.strip())
        if not m:
            raise InputError(f"place cells {text!r}: expected CELL_M[,K[,PARENT_CELL_M[,PARENTS]]]")
        try:
            return cls(float(m[1]), int(m[2]) if m[2] else d.K, float(m[3]) if m[3] else d.parent_cell_m,
                       int(m[4]) if m[4] else d.parents, d.seed)
        except ValueError as exc:
            raise InputError(f"place cells {text!r}: {exc}") from exc

    def name(self) -> str:
        tail = f",{self.parent_cell_m:g},{self.parents}" if self.hierarchical else ",0"
        return f"{self.cell_m:g},{self.K}{tail}"

    def labels(self, xyz: np.ndarray, material: np.ndarray | None = None, sky: np.ndarray | None = None) -> np.ndarray:
        """(n,) int64 labels of world points (n,3); `material` ids mixed into the hash if given;
        `sky` points get K-1."""
        mat = np.zeros(len(xyz), np.int64) if material is None else material

        def cell_hash(size: float, salt: int) -> np.ndarray:
            c = np.floor(xyz / size).astype(np.int64)
            return _mix(np.full_like(mat, self.seed * 7919 + salt), mat, c[:, 0], c[:, 1], c[:, 2])

        if self.hierarchical:
            B = self.K // self.parents
            parent = (cell_hash(self.parent_cell_m, 1) % np.uint64(self.parents - 1)).astype(np.int64)
            child = (cell_hash(self.cell_m, 2) % np.uint64(B)).astype(np.int64)
            labels = parent * B + child
        else:
            labels = (cell_hash(self.cell_m, 0) % np.uint64(self.K - 1)).astype(np.int64)
        if sky is not None:
            labels[sky] = self.K - 1
        return labels


def _mix(*keys: np.ndarray) -> np.ndarray:
    """A well-spread uint64 hash of integer arrays (splitmix64 finaliser over a running mix)."""
    h = np.zeros(np.broadcast(*keys).shape, np.uint64)
    with np.errstate(over="ignore"):
        for k in keys:
            h ^= np.asarray(k).astype(np.int64).astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15) \
                + (h << np.uint64(6)) + (h >> np.uint64(2))
            h ^= h >> np.uint64(30)
            h *= np.uint64(0xBF58476D1CE4E5B9)
            h ^= h >> np.uint64(27)
            h *= np.uint64(0x94D049BB133111EB)
            h ^= h >> np.uint64(31)
    return h


def level_labels(labels: np.ndarray, K: int, K_level: int) -> np.ndarray:
    """Map labels (finest level, K classes) as a level of K_level classes reads them: the parent
    label // (K / K_level) on a coarse level of a hierarchical segmenter, else themselves."""
    return labels if K_level == K else np.asarray(labels) // (K // K_level)
