"""Localization against a labeled map: retrieval, the label-consistency refiner, the localizer.

Lives here: `lm` (Levenberg-Marquardt), `refine` (SegLoc Eq. 7 over probability maps), `retrieval`
(faiss index over whitened descriptors, pose priors), `localizer` (prior -> refinement -> gates,
and the tracking state machine).

May import: the top-level modules and `maps` (format, query sets). Never `net`: the refiner knows
probability maps and their reductions (`segloc_core.reductions`), not the network that made them.
"""
