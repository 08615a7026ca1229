"""`segloc eval seg`: how consistent and how retrievable the segmentations are across conditions.

- Label consistency: on held-out cross-condition pairs of the world (places never trained on,
  `segloc_core.net.pairs.in_heldout`), the share of correspondences whose argmax labels agree, per
  level and per condition pair. Also the normalised entropy of the labels used (a network that
  collapses to one label would be perfectly "consistent" and useless; this exposes it). Beside it,
  the finest level's agreement only where the two pixel positions differ by more than 20 px, with
  its chance level (aligned viewpoints cannot flatter it), and the positional-shortcut figure: the
  same-pixel agreement between frames more than 50 m apart, against chance
  (`segloc_core.label_metrics`; the issue-12 label-quality metrics).
- Retrieval: database = the mapping condition's frames, queries = the other conditions' frames at
  held-out places; a query is correct at k if one of its top-k database frames lies within 5 m and
  20 degrees of it. Our descriptor (GPO, PCA-whitened on the database) against two baselines in
  the same run: a tiny image (16x12 RGB, zero-mean, L2) and a class histogram (finest-level
  argmax labels, Hellinger-normalised).
- Place-label accuracy (models that name place cells, `ModelConfig.place_cells`): per condition,
  the share of the finest level's non-sky, static pixels whose argmax is the cell the pixel sees
  (from the world's depth and pose), over the same database and query frames: how well the labels
  survive a condition never trained on.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from segloc_core.descriptor import fit_whitening
from segloc_core.errors import InputError

RECALL_MAX_M = 5.0
RECALL_MAX_DEG = 20.0
METHODS = ("segloc_gpo", "tiny_image", "class_histogram")


@dataclass(frozen=True)
class SegEvalResult:
    model_hash: str
    backend: str
    consistency_by_pair: dict[str, list[float]]  # "condA|condB" -> share per level (coarse to fine)
    consistency: list[float]  # per level over all held-out pairs
    label_entropy: list[float]  # per level, 1 = all K labels used evenly
    cross_condition_consistency_20px: float  # finest level, correspondences > 20 px apart
    cross_condition_chance: float
    positional_agreement: float  # same pixel, frames > 50 m apart (median over pairs)
    positional_chance: float
    recall: dict[str, dict[str, float]]  # method -> {"r@1", "r@5"}
    recall_by_condition: dict[str, dict[str, dict[str, float]]]  # query condition -> method -> recalls
    num_pairs: int
    num_queries: int
    num_database: int
    place_accuracy_by_condition: dict[str, float]  # condition -> finest-level accuracy (place-cell models)


def tiny_image(rgb: np.ndarray, size_wh: tuple[int, int] = (16, 12)) -> np.ndarray:
    """Tiny-image baseline descriptor: area-downsampled RGB, zero mean, unit norm."""
    from segloc_core.net.pairs import resize_image

    x = resize_image(rgb, size_wh)[0].astype(np.float32).ravel()
    x -= x.mean()
    return x / max(float(np.linalg.norm(x)), 1e-12)


def class_histogram(probs: np.ndarray) -> np.ndarray:
    """Class-histogram baseline: frequency of each argmax label, square-rooted (Hellinger), unit norm."""
    k = probs.shape[0]
    h = np.bincount(probs.argmax(0).ravel(), minlength=k).astype(np.float32)
    h = np.sqrt(h / max(h.sum(), 1))
    return h / max(float(np.linalg.norm(h)), 1e-12)


def recall_at(query_desc: np.ndarray, db_desc: np.ndarray, correct: np.ndarray, ks=(1, 5)) -> dict[str, float]:
    """correct (Q, N) bool: db frame n is a right answer for query q. Inner-product ranking."""
    order = np.argsort(-(query_desc @ db_desc.T), axis=1)
    return {f"r@{k}": float(np.take_along_axis(correct, order[:, :k], 1).any(1).mean()) for k in ks}


def pose_correct(T_world_q: np.ndarray, T_world_db: np.ndarray) -> np.ndarray:
    """(Q,4,4), (N,4,4) camera-to-world -> (Q,N) within RECALL_MAX_M and RECALL_MAX_DEG."""
    d = np.linalg.norm(T_world_q[:, None, :3, 3] - T_world_db[None, :, :3, 3], axis=2)
    rel = np.einsum("qji,njk->qnik", T_world_q[:, :3, :3], T_world_db[:, :3, :3])
    cos = np.clip((np.trace(rel, axis1=2, axis2=3) - 1) / 2, -1, 1)
    return (d < RECALL_MAX_M) & (np.degrees(np.arccos(cos)) < RECALL_MAX_DEG)


def label_consistency(seg, ps) -> tuple[dict[str, list[float]], list[float], list[float], tuple[float, float]]:
    """Per condition pair and overall share of agreeing argmax labels (nearest level pixel), label
    entropy per level, and (agreement, chance) on the finest level at correspondences > 20 px apart."""
    from segloc_core import label_metrics as lm

    labels: dict[str, list[np.ndarray]] = {}
    keys = sorted({k for r in ps.pairs for k in (r.key_a, r.key_b)})
    for key, res in zip(keys, seg.segment_batch((ps.images[k] for k in keys), total=len(keys))):
        labels[key] = [lv.probs.argmax(0) for lv in res.levels]
    w, h = seg.input_size
    agree: dict[str, np.ndarray] = {}
    count: dict[str, int] = {}
    hist = np.zeros((4, seg.K))
    shifted = []
    for r in ps.pairs:
        name = "|".join(sorted((ps.condition[r.key_a], ps.condition[r.key_b])))
        row = agree.setdefault(name, np.zeros(4))
        for lv in range(4):
            la, lb = labels[r.key_a][lv], labels[r.key_b][lv]
            sx, sy = la.shape[1] / w, la.shape[0] / h
            ia = np.minimum((r.uv_a * (sx, sy)).astype(int), (la.shape[1] - 1, la.shape[0] - 1))
            ib = np.minimum((r.uv_b * (sx, sy)).astype(int), (lb.shape[1] - 1, lb.shape[0] - 1))
            a, b = la[ia[:, 1], ia[:, 0]], lb[ib[:, 1], ib[:, 0]]
            row[lv] += (a == b).sum()
            hist[lv] += np.bincount(np.concatenate([a, b]), minlength=seg.K)
        count[name] = count.get(name, 0) + len(r.uv_a)
        agree_far, chance_far, n_far = lm.cross_condition_consistency(
            labels[r.key_a][-1], labels[r.key_b][-1], r.uv_a, r.uv_b, (w, h), 20.0)
        if n_far:
            shifted.append((agree_far * n_far, chance_far * n_far, n_far))
    by_pair = {n: [float(v) for v in agree[n] / count[n]] for n in sorted(agree)}
    overall = [float(v) for v in sum(agree.values()) / sum(count.values())]
    freq = hist / np.maximum(hist.sum(1, keepdims=True), 1)
    ent = -(freq * np.log(np.where(freq > 0, freq, 1))).sum(1) / np.log(seg.K)
    total = sum(s[2] for s in shifted)
    far = (sum(s[0] for s in shifted) / total, sum(s[1] for s in shifted) / total) if total else (np.nan, np.nan)
    return by_pair, overall, [float(v) for v in ent], (float(far[0]), float(far[1]))


def evaluate_segmentation(model: Path | None = None, backend: str = "auto", world: Path | None = None,
                          pairs: int = 60, db_step: int = 2, query_step: int = 2, whiten_dim: int = 128,
                          seed: int = 1) -> SegEvalResult:
    """Both metrics for one model on a rendered world (default: the default world)."""
    from segloc_core.net.infer import load_segmenter
    from segloc_core.net.pairs import in_heldout, world_pairs
    from segloc_core.paths import world_dir
    from segloc_core.world import load_world

    seg = load_segmenter(model, backend)
    root = Path(world) if world else world_dir("default")
    ps = world_pairs(root, seg.input_size, "heldout", pairs, max_corr=512, seed=seed)
    by_pair, overall, entropy, far = label_consistency(seg, ps)

    ds = load_world(root)
    db = ds.frames(ds.mapping_condition)[::db_step]
    queries = [r for c in ds.conditions if c != ds.mapping_condition
               for r in ds.frames(c)[::query_step] if in_heldout(r.T_world_cam.t)]
    if not db or not queries:
        raise InputError(f"world {root} has no database or held-out query frames")
    desc: dict[str, list[np.ndarray]] = {m: [] for m in METHODS}
    recs = db + queries
    finest = []
    hits: dict[str, list[int]] = {}
    for rec, res in zip(recs, seg.segment_batch((ds.rgb(r) for r in recs), total=len(recs))):
        finest.append(res.levels[-1].probs.argmax(0))
        if seg.place_cells is not None:
            h = hits.setdefault(rec.condition, [0, 0])
            ok, total = place_hits(finest[-1], ds, rec, seg.place_cells)
            h[0], h[1] = h[0] + ok, h[1] + total
        desc["segloc_gpo"].append(res.descriptor)
        desc["tiny_image"].append(tiny_image(ds.rgb(rec)))
        desc["class_histogram"].append(class_histogram(res.levels[-1].probs))
    n = len(db)
    white = fit_whitening(np.stack(desc["segloc_gpo"][:n]), whiten_dim)
    mats = {m: np.stack(v) for m, v in desc.items()}
    mats["segloc_gpo"] = white.apply(mats["segloc_gpo"])
    T_db = np.stack([r.T_world_cam.matrix() for r in db])
    T_q = np.stack([r.T_world_cam.matrix() for r in queries])
    correct = pose_correct(T_q, T_db)
    recall = {m: recall_at(mats[m][n:], mats[m][:n], correct) for m in METHODS}
    by_cond: dict[str, dict[str, dict[str, float]]] = {}
    qcond = np.array([r.condition for r in queries])
    for c in sorted(set(qcond)):
        sel = np.flatnonzero(qcond == c)
        by_cond[c] = {m: recall_at(mats[m][n:][sel], mats[m][:n], correct[sel]) for m in METHODS}
    from segloc_core import label_metrics as lm

    positional, positional_chance, _ = lm.positional_agreement(
        finest, np.stack([r.T_world_cam.t for r in recs]), seg.K)
    return SegEvalResult(seg.model_hash, seg.backend, by_pair, overall, entropy, *far, positional,
                         positional_chance, recall, by_cond, len(ps), len(queries), n,
                         {c: v[0] / max(v[1], 1) for c, v in sorted(hits.items())})


def place_hits(argmax: np.ndarray, ds, rec, cells) -> tuple[int, int]:
    """(right, counted) finest-level pixels of one world frame: the argmax against the place cell
    the pixel's centre sees; sky and movable objects are not counted."""
    from segloc_core.net.label_set import IGNORE, frame_labels

    truth = frame_labels(ds.ids(rec), ds.depth(rec), rec.camera, rec.T_world_cam, cells, False)
    h, w = argmax.shape
    H, W = truth.shape
    ys, xs = (np.arange(h) * H // h + H // (2 * h)), (np.arange(w) * W // w + W // (2 * w))
    t = truth[np.ix_(ys, xs)].astype(np.int64)
    keep = (t != IGNORE) & (t != cells.K - 1)  # the sky label is K-1
    return int((argmax[keep] == t[keep]).sum()), int(keep.sum())


def plot(result: SegEvalResult, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    for name, vals in result.consistency_by_pair.items():
        ax[0].plot(range(4), vals, marker="o", label=name)
    ax[0].set_xticks(range(4), ["stride 16", "stride 8", "stride 4", "stride 2"])
    ax[0].set_ylabel("label consistency (held-out)")
    ax[0].legend(fontsize=7)
    x = np.arange(len(METHODS))
    ax[1].bar(x - 0.2, [result.recall[m]["r@1"] for m in METHODS], 0.4, label="recall@1")
    ax[1].bar(x + 0.2, [result.recall[m]["r@5"] for m in METHODS], 0.4, label="recall@5")
    ax[1].set_xticks(x, METHODS)
    ax[1].set_ylabel(f"retrieval recall ({RECALL_MAX_M:g} m, {RECALL_MAX_DEG:g} deg)")
    ax[1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _run(args: argparse.Namespace) -> int:
    res = evaluate_segmentation(args.model, args.backend, args.world, args.pairs, args.db_step, args.query_step)
    doc = asdict(res)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(doc, indent=1))
        plot(res, args.out.with_suffix(".png"))
    for lv, v in enumerate(res.consistency):
        print(f"level {lv}: label consistency {v:.3f}, label entropy {res.label_entropy[lv]:.2f}")
    print(f"finest level, correspondences > 20 px apart: agreement {res.cross_condition_consistency_20px:.3f} "
          f"(chance {res.cross_condition_chance:.3f}); same pixel, frames > 50 m apart: "
          f"{res.positional_agreement:.3f} (chance {res.positional_chance:.3f})")
    for m in METHODS:
        print(f"{m}: recall@1 {res.recall[m]['r@1']:.3f}, recall@5 {res.recall[m]['r@5']:.3f}")
    if res.place_accuracy_by_condition:
        print("place-label accuracy (finest level, non-sky static pixels): " + ", ".join(
            f"{c} {v:.3f}" for c, v in res.place_accuracy_by_condition.items()))
    print(json.dumps(doc))
    return 0


def configure_cli(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, default=None, help="model (.onnx/.pt/.yaml); default: shipped")
    parser.add_argument("--backend", default="auto", help="auto, tensorrt, onnxruntime or torch")
    parser.add_argument("--world", type=Path, default=None, help="rendered world folder (default: the default world)")
    parser.add_argument("--pairs", type=int, default=60, help="held-out cross-condition pairs")
    parser.add_argument("--db-step", type=int, default=2, help="every n-th mapping frame in the database")
    parser.add_argument("--query-step", type=int, default=2, help="every n-th held-out frame as a query")
    parser.add_argument("--out", type=Path, default=None, help="write the JSON here (and a PNG beside it)")
    parser.set_defaults(func=_run)
