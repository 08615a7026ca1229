"""The segloc nodes: segmentation -> retrieval -> refiner (see segloc_ros.graph)."""
