"""Benchmarks (`segloc bench ...`, JSON on the last line) and the scenes they measure on.

Lives here: `accuracy` (end to end: oracle ceiling vs model), `refine` (the refiner's speed and
accuracy on the oracle's product-size levels and map), `scenes` (ray-cast street scenes and oracle
level maps for the refiner's tests), `segment` (network backends), `retrieval` (faiss at scale),
`world` (rendering frame rate).

May import anything in the library; nothing in the library imports it (`segloc_core.cli` names
these modules as strings and loads only the one asked for).
"""
