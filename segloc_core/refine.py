"""Label-consistency pose refiner (SegLoc Eq. 7) -- work in progress; reductions contract is final."""

from __future__ import annotations

from segloc_core.reductions import REDUCTION_NAMES, level_reductions

__all__ = ["REDUCTION_NAMES", "level_reductions"]
