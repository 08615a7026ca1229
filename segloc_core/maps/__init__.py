"""Labeled maps: the file format, building them from any source, and query sets.

Lives here: `format` (the versioned, checksummed container), `build` (geometry from a source, labels
by voting or by place cells, whitened descriptors), `colmap` (COLMAP/kapture import, triangulation,
SfM from images), `query_sets` (query images with intrinsics and optional ground truth) and `cli`
(`segloc map build|import|info`, the cached world map the demo and benchmarks share).

May import: the top-level modules, `world` (the rendered world as a source) and, in `cli` only,
`net` (a map is labelled by a segmenter). `format` and `query_sets` import neither `net` nor
`localize`: the localizer reads maps without knowing networks.
"""
