"""`segloc retrieve`: query a map's image database with images (segment, describe, retrieve).

Here rather than in `segloc_core.localize.retrieval` because it runs a network, which the
localization part never imports.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from segloc_core.errors import InputError
from segloc_core.localize.retrieval import PRIOR_MODES, PosePrior, RetrievalConfig, Retriever
from segloc_core.maps.format import LabeledMap, load_map


def retrieve_images(labeled_map: LabeledMap, images: list[Path], model_path: Path | None = None,
                    config: RetrievalConfig = RetrievalConfig()) -> list[PosePrior]:
    """Segment each image with the model, retrieve from the map and compute its pose prior."""
    import cv2

    from segloc_core.net.infer import load_segmenter

    retriever = Retriever(labeled_map, config)
    seg = load_segmenter(model_path)
    if seg.model_hash != labeled_map.meta.model_hash:
        raise InputError(f"the map was built with model {labeled_map.meta.model_hash}, the loaded "
                         f"model is {seg.model_hash}; rebuild the map or pass its model with --model")
    out = []
    for path in images:
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None:
            raise InputError(f"{path}: not a readable image")
        out.append(retriever.prior(seg.segment(bgr[:, :, ::-1].copy()).descriptor))
    return out


def _cli_retrieve(args: argparse.Namespace) -> int:
    from segloc_core.paths import map_path

    m = load_map(Path(args.map) if args.map else map_path("default"))
    config = RetrievalConfig(top_k=args.top_k, prior_mode=args.prior)
    priors = retrieve_images(m, [Path(p) for p in args.images], Path(args.model) if args.model else None, config)
    for path, prior in zip(args.images, priors):
        print(json.dumps({"image": str(path), "top_k": [m.images.names[i] for i in prior.retrieved.image_ids],
                          "scores": [round(float(s), 4) for s in prior.retrieved.scores],
                          "prior_q_cam_world_xyzw": prior.T_cam_world.quat_xyzw().round(6).tolist(),
                          "prior_t_cam_world_m": prior.T_cam_world.t.round(4).tolist(),
                          "prior_sigma_m": np.sqrt(np.diag(prior.covariance)[:3]).round(3).tolist(),
                          "points": int(len(prior.point_ids))}))
    return 0


def configure_cli(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="+", help="query image files")
    parser.add_argument("--map", help="labeled map (default: the default world's map)")
    parser.add_argument("--model", help="segmentation model (default: the shipped one)")
    parser.add_argument("--top-k", type=int, default=RetrievalConfig.top_k)
    parser.add_argument("--prior", choices=PRIOR_MODES, default=RetrievalConfig.prior_mode)
    parser.set_defaults(func=_cli_retrieve)
