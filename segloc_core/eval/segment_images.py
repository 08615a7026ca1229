"""`segloc segment IMAGES --out DIR`: see what the model makes of your own images.

For every image (files, or folders of .jpg/.jpeg/.png), the finest level's argmax labels are drawn
in colour over the image (nearest upsampling to the image's size, one fixed colour per label) and
written as `<stem>_labels.png`; `contact_sheet.png` shows up to 16 images beside their labels. The
last stdout line is a JSON summary (images, labels used over all of them, files written).

Why: before a map is built or a model trained for a place, a user should see whether the labels
follow the world (the same surface, the same colour, whatever the viewpoint) or the image position
(bands that look the same in every picture), which is how the self-supervised model failed.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from segloc_core.errors import InputError
from segloc_core.net.infer import load_segmenter
from segloc_core.progress import progress_bar

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def palette(K: int, seed: int = 7) -> np.ndarray:
    """(K,3) uint8 colours, fixed for a given K, neighbouring labels far apart in colour."""
    rng = np.random.default_rng(seed)
    return rng.integers(40, 256, (K, 3), dtype=np.uint8)


def collect_images(inputs: list[Path]) -> list[Path]:
    out: list[Path] = []
    for p in inputs:
        if p.is_dir():
            out += sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        elif p.is_file():
            out.append(p)
        else:
            raise InputError(f"{p}: no such image or folder")
    if not out:
        raise InputError(f"no .jpg/.jpeg/.png images in {', '.join(map(str, inputs))}")
    return out


def overlay(rgb: np.ndarray, labels: np.ndarray, colours: np.ndarray, alpha: float = 0.6) -> np.ndarray:
    """The label map (h,w) in colour over the part of the image (H,W,3) the network saw (its
    centred crop of the network's aspect, `geometry.aspect_crop`), nearest-upsampled; the rest of
    the image is shown dimmed."""
    from segloc_core.geometry import aspect_crop

    H, W = rgb.shape[:2]
    h, w = labels.shape
    x0, y0, cw, ch = aspect_crop(W, H, (w, h))
    out = (rgb.astype(np.float32) * 0.35).astype(np.uint8)
    window = rgb[y0:y0 + ch, x0:x0 + cw]
    rows, cols = np.arange(ch) * h // ch, np.arange(cw) * w // cw
    colour = colours[labels[rows][:, cols]].astype(np.float32)
    out[y0:y0 + ch, x0:x0 + cw] = np.round((1 - alpha) * window.astype(np.float32) + alpha * colour).astype(np.uint8)
    return out


def segment_images(images: list[Path], out: Path, model: Path | None = None, backend: str = "auto",
                   progress: bool = True) -> dict:
    import cv2

    segmenter = load_segmenter(model, backend)
    colours = palette(segmenter.K)
    out.mkdir(parents=True, exist_ok=True)
    written, sheet, used, skipped = [], [], np.zeros(segmenter.K, bool), []
    for path in progress_bar(images, desc="segment", unit="img", enabled=progress):
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None:
            skipped.append(f"{path}: not a readable image")
            continue
        rgb = bgr[:, :, ::-1].copy()
        labels = segmenter.segment(rgb).levels[-1].probs.argmax(0)
        used[np.unique(labels)] = True
        drawn = overlay(rgb, labels, colours)
        target = out / f"{path.stem}_labels.png"
        cv2.imwrite(str(target), drawn[:, :, ::-1])
        written.append(str(target))
        if len(sheet) < 16:
            sheet.append((path.name, rgb, drawn))
    if sheet:
        _contact_sheet(sheet, out / "contact_sheet.png")
    return {"images": len(written), "skipped": skipped, "labels_used": int(used.sum()), "K": segmenter.K,
            "model": segmenter.model_hash, "out": str(out), "files": written}


def _contact_sheet(rows: list[tuple[str, np.ndarray, np.ndarray]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(rows), 2, figsize=(7, 2.6 * len(rows)), squeeze=False)
    for (name, rgb, drawn), (a, b) in zip(rows, axes):
        a.imshow(rgb)
        b.imshow(drawn)
        a.set_title(name, fontsize=8)
        for ax in (a, b):
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _run(args: argparse.Namespace) -> int:
    from segloc_core.paths import home

    summary = segment_images(collect_images(args.images), args.out or home() / "segment", args.model, args.backend)
    if not summary["images"]:
        raise InputError("no image could be read: " + "; ".join(summary["skipped"]))
    print(json.dumps({k: v for k, v in summary.items() if k != "files"}))
    return 0


def configure_cli(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", type=Path, nargs="+", help="image files or folders of .jpg/.jpeg/.png")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: $SEGLOC_HOME/segment)")
    parser.add_argument("--model", type=Path, default=None, help="segmentation model (default: shipped)")
    parser.add_argument("--backend", default="auto", help="auto, tensorrt, onnxruntime or torch")
    parser.set_defaults(func=_run)
