"""The segmentation networks and what stands in their place.

Lives here: the SegLoc network (`model`), its training (`train` for the self-supervised SegLoc and
FGSN modes, `train_geometry` for geometry labels, `train_config`, `losses`, `pairs`, `label_set`),
inference backends (`infer`: TensorRT, ONNX Runtime, PyTorch), ONNX export (`export`), the oracle
segmenter (`oracle`, a diagnostic with ground-truth labels) and the choice among them (`segmenters`).

May import: the top-level modules (`geometry`, `errors`, `paths`, `reductions`, `place_labels`,
`descriptor`) and `world` (training data). Never `localize`, `maps`, `eval` or `bench`.
"""
