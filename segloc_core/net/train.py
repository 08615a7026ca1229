"""Self-supervised training of the SegLoc network (paper 000 Sec. 3) or the FGSN baseline (paper 001).

`train(config, out_dir)` runs epochs of steps over image pairs with correspondences
(`segloc_core.net.pairs`), writes a checkpoint after every epoch (resumable with `resume=True`), logs
per-epoch metrics to `metrics.csv` / `metrics.json`, plots them to `training.png`, and leaves the
final weights as a plain state dict `model.pt` with its `model.yaml` (model config + training config).

SegLoc mode, per decoder level: discriminative clustering (targets from the closed-form update
Eq. 2, or in the warm-up epochs from a Student-t kernel on k-means prototypes, Eq. 4), correspondence
consistency, prototypical cross-contrastive and contrastive feature consistency; plus the
multi-similarity loss on the GPO descriptor. Every term has a weight in the config (0 = off).
The k-means prototypes are computed on the freshly initialised network's features (no pretrained
encoder exists here) and also initialise the heads.

FGSN mode: heads learn k-means labels of PCA-whitened features (L_class on the reference image,
L_corr at correspondences); every `recluster_every` steps the features are re-clustered and the
heads re-initialised N(0, 0.01). Labels are assigned on the fly with the frozen PCA and centroids
of the last clustering (FGSN stores them per image; same labels as long as features move slowly).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from segloc_core.descriptor import Whitening, fit_whitening
from segloc_core.errors import InputError
from segloc_core.net import losses as L
from segloc_core.net import train_geometry
from segloc_core.net.model import SegLocNet
from segloc_core.net.pairs import PairSet, colmap_pairs, synthetic_pairs, world_pairs
from segloc_core.net.train_config import CONFIG_DIR, TrainConfig, TrainResult
from segloc_core.net.train_outputs import finish_run, make_optimizer, resume_checkpoint, start_run, write_epoch_logs
from segloc_core.progress import progress_bar

log = logging.getLogger(__name__)


def load_pairs(cfg: TrainConfig, split: str) -> PairSet:
    d, size = cfg.data, (cfg.model.input_width, cfg.model.input_height)
    n = d.train_pairs if split == "train" else d.heldout_pairs
    seed = cfg.optim.seed + (0 if split == "train" else 1)
    if d.source == "world":
        from segloc_core.paths import world_dir

        path = Path(d.world) if "/" in d.world else world_dir(d.world)
        return world_pairs(path, size, split, n, d.conditions, d.max_corr, seed=seed)
    if d.source == "colmap":
        if not d.colmap_model or not d.colmap_images:
            raise InputError("data.source=colmap needs data.colmap_model and data.colmap_images")
        return colmap_pairs(Path(d.colmap_model), Path(d.colmap_images), size, n, max_corr=d.max_corr, seed=seed)
    if d.source == "synthetic":
        return synthetic_pairs(n, size, d.max_corr, seed=seed)
    raise InputError(f"data.source must be world, colmap or synthetic, got {d.source!r}")


def _batch(ps: PairSet, idx: list[int], corr: int, rng: np.random.Generator, device: torch.device):
    """Images (2P,3,H,W) float 0..255 [a..., b...], uv (P,corr,2) x2, T_world_cam (2P,4,4)."""
    recs = [ps.pairs[i] for i in idx]
    keys = [r.key_a for r in recs] + [r.key_b for r in recs]
    imgs = torch.from_numpy(np.stack([ps.images[k] for k in keys])).permute(0, 3, 1, 2).float()
    sel = [rng.integers(0, len(r.uv_a), corr) for r in recs]
    uv_a = torch.from_numpy(np.stack([r.uv_a[s] for r, s in zip(recs, sel)]))
    uv_b = torch.from_numpy(np.stack([r.uv_b[s] for r, s in zip(recs, sel)]))
    T = torch.from_numpy(np.stack([ps.T_world_cam[k] for k in keys])).float()
    return imgs.to(device), uv_a.to(device), uv_b.to(device), T.to(device)


def photometric_augment(imgs: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Per image brightness, contrast, colour gain and noise: appearance change beyond the world's."""
    b = imgs.shape[0]
    r = lambda *s: torch.rand(*s, generator=gen).to(imgs.device)  # noqa: E731
    gain = 0.7 + 0.6 * r(b, 1, 1, 1)
    colour = 0.9 + 0.2 * r(b, 3, 1, 1)
    mean = imgs.mean(dim=(1, 2, 3), keepdim=True)
    contrast = 0.7 + 0.6 * r(b, 1, 1, 1)
    out = ((imgs - mean) * contrast + mean) * gain * colour
    out = out + 4.0 * torch.randn(imgs.shape, generator=gen).to(imgs.device)
    return out.clamp(0, 255)


@torch.no_grad()
def level_features(net: SegLocNet, ps: PairSet, keys: list[str], per_image: int, device: torch.device,
                   seed: int) -> list[np.ndarray]:
    """Random pixel features of each level over `keys` images: list of (N,D) float32, coarse to fine."""
    gen = torch.Generator().manual_seed(seed)
    feats: list[list[np.ndarray]] = [[] for _ in range(4)]
    for i in range(0, len(keys), 8):
        x = torch.from_numpy(np.stack([ps.images[k] for k in keys[i:i + 8]])).permute(0, 3, 1, 2).float()
        out = net(x.to(device), dense_logits=False)
        for lv, level in enumerate(out.levels):
            feats[lv].append(L.sample_pixels(level.features, per_image, gen).cpu().numpy())
    return [np.concatenate(f).astype(np.float32) for f in feats]


def kmeans(x: np.ndarray, k: int, seed: int, spherical: bool = True) -> np.ndarray:
    """faiss k-means (K,D) centres; spherical = unit-norm centres (cosine clustering)."""
    import faiss

    km = faiss.Kmeans(x.shape[1], k, niter=20, seed=seed, spherical=spherical, verbose=False,
                      min_points_per_centroid=1)
    km.train(np.ascontiguousarray(x, dtype=np.float32))
    return km.centroids.astype(np.float32)


@torch.no_grad()
def label_consistency(net: SegLocNet, ps: PairSet, device: torch.device) -> tuple[list[float], list[float]]:
    """Per level: share of correspondences whose argmax labels agree, and the normalised entropy of
    those labels' histogram (1 = all K used evenly; a collapse to one label would also 'agree')."""
    net.eval()
    k = net.config.num_classes
    agree, total = np.zeros(4), 0
    hist = np.zeros((4, k))
    size = (net.config.input_width, net.config.input_height)
    for i in range(0, len(ps.pairs), 4):
        idx = list(range(i, min(i + 4, len(ps.pairs))))
        recs = [ps.pairs[j] for j in idx]
        n = min(len(r.uv_a) for r in recs)
        imgs = torch.from_numpy(np.stack([ps.images[r.key_a] for r in recs] + [ps.images[r.key_b] for r in recs]))
        out = net(imgs.permute(0, 3, 1, 2).float().to(device))
        uv_a = torch.from_numpy(np.stack([r.uv_a[:n] for r in recs])).to(device)
        uv_b = torch.from_numpy(np.stack([r.uv_b[:n] for r in recs])).to(device)
        p = len(recs)
        for lv, level in enumerate(out.levels):
            la = L.sample_points(level.logits[:p], uv_a, size).argmax(-1)
            lb = L.sample_points(level.logits[p:], uv_b, size).argmax(-1)
            agree[lv] += (la == lb).sum().item()
            hist[lv] += np.bincount(torch.cat([la, lb]).flatten().cpu().numpy(), minlength=k)
        total += p * n
    net.train()
    freq = hist / np.maximum(hist.sum(1, keepdims=True), 1)
    ent = -(freq * np.log(np.where(freq > 0, freq, 1))).sum(1) / math.log(k)
    return [float(v) for v in agree / max(total, 1)], [float(v) for v in ent]


class _Fgsn:
    """FGSN clustering state per level: PCA whitening + centroids, and the on-the-fly labeller."""

    def __init__(self) -> None:
        self.white: list[Whitening] = []
        self.centroids: list[torch.Tensor] = []

    def recluster(self, net: SegLocNet, ps: PairSet, cfg: TrainConfig, device: torch.device, step: int) -> None:
        keys = sorted({r.key_a for r in ps.pairs})[: cfg.optim.kmeans_images]
        was_training = net.training
        feats = level_features(net, ps, keys, cfg.optim.pixels_per_image, device, cfg.optim.seed + step)
        net.train(was_training)
        self.white, self.centroids = [], []
        for lv, x in enumerate(feats):
            w = fit_whitening(x, cfg.fgsn.pca_dim)
            self.white.append(w)
            c = kmeans(w.apply(x), cfg.model.num_classes, cfg.optim.seed + step)
            self.centroids.append(torch.from_numpy(c).to(device))
            head = net.heads[lv]
            torch.nn.init.normal_(head.weight, 0.0, 0.01)
            torch.nn.init.zeros_(head.bias)

    def labels(self, lv: int, feats: torch.Tensor) -> torch.Tensor:
        """(N,D) features -> (N,) labels of the nearest centroid in the whitened space."""
        w = self.white[lv]
        mean = torch.from_numpy(w.mean).to(feats.device)
        proj = torch.from_numpy(w.projection).to(feats.device)
        z = F.normalize((feats.detach() - mean) @ proj, dim=1)
        return (z @ self.centroids[lv].T).argmax(1)


def _step_losses(net: SegLocNet, batch, cfg: TrainConfig, epoch: int, warm_centers: list[torch.Tensor],
                 fgsn: _Fgsn | None, gen: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
    imgs, uv_a, uv_b, T = batch
    p = uv_a.shape[0]
    size = (cfg.model.input_width, cfg.model.input_height)
    out = net(photometric_augment(imgs, gen), dense_logits=False)
    w = cfg.loss
    total = torch.zeros((), device=imgs.device)
    logs: dict[str, float] = {}

    def add(name: str, weight: float, value: torch.Tensor) -> None:
        nonlocal total
        total = total + weight * value / len(out.levels)
        logs[name] = logs.get(name, 0.0) + float(value.detach()) / len(out.levels)

    for lv, level in enumerate(out.levels):
        feats_px = L.sample_pixels(level.features, cfg.optim.pixels_per_image, gen)
        logits_px = net.head_logits(lv, feats_px)
        # The head is linear, so head(bilinear sample of F) == bilinear sample of the logits.
        fa_raw = L.sample_points(level.features[:p], uv_a, size)
        fb_raw = L.sample_points(level.features[p:], uv_b, size)
        la, lb = net.head_logits(lv, fa_raw).flatten(0, 1), net.head_logits(lv, fb_raw).flatten(0, 1)
        fa, fb = F.normalize(fa_raw, dim=-1), F.normalize(fb_raw, dim=-1)
        if fgsn is not None:
            n_a = feats_px.shape[0] // 2  # sample_pixels keeps image order: first half = reference images
            add("class", 1.0, L.fgsn_class_loss(logits_px[:n_a], fgsn.labels(lv, feats_px[:n_a])))
            add("corr", 1.0, L.fgsn_corr_loss(la, lb, fgsn.labels(lv, fa.flatten(0, 1))))
            continue
        centers = L.prototypes(net.heads[lv].weight).detach()
        if w.dc > 0:
            if epoch < cfg.optim.warmup_epochs:
                q = L.student_t_targets(feats_px, warm_centers[lv])
            elif w.label_prior == "sinkhorn":
                q = L.sinkhorn_targets(torch.softmax(logits_px, 1), w.sinkhorn_sharpen)
            else:
                q = L.target_update(torch.softmax(logits_px, 1), w.label_prior)
            ce, dc_value = L.discriminative_clustering(logits_px, q)
            add("dc_ce", w.dc, ce)
            logs["dc"] = logs.get("dc", 0.0) + float(dc_value) / len(out.levels)
        s_a = (fa.flatten(0, 1) @ centers.T).argmax(1)
        s_b = (fb.flatten(0, 1) @ centers.T).argmax(1)
        if w.cc > 0:
            add("cc", w.cc, L.correspondence_consistency(la, lb, s_a, s_b))
        if w.pc > 0:
            phi = L.concentrations(feats_px.detach(), centers)
            add("pc", w.pc, L.prototypical_cross_contrastive(fa.flatten(0, 1), fb.flatten(0, 1), s_a, s_b,
                                                              centers, phi))
        if w.fc > 0:
            add("fc", w.fc, L.feature_consistency(fa, fb, w.fc_tau))
        logs[f"usage_{lv}"] = L.entropy_normalised(torch.softmax(logits_px, 1))
    if w.ms > 0 and fgsn is None:
        pos, neg = L.pose_masks(T)
        partner = torch.arange(2 * p, device=T.device).roll(p)
        pos[torch.arange(2 * p), partner] = True
        neg[torch.arange(2 * p), partner] = False
        ms = L.multi_similarity(out.descriptor, pos, neg)
        total = total + w.ms * ms
        logs["ms"] = float(ms.detach())
    logs["loss"] = float(total.detach())
    return total, logs


def _plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [r["epoch"] for r in rows]
    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    for k in ("loss", "dc_ce", "cc", "pc", "fc", "ms", "class", "corr"):
        if k in rows[0]:
            ax[0].plot(ep, [r[k] for r in rows], marker="o", label=k)
    ax[0].set_xlabel("epoch")
    ax[0].set_ylabel("training loss (epoch mean)")
    ax[0].legend()
    for lv in range(4):
        ax[1].plot(ep, [r[f"heldout_consistency_{lv}"] for r in rows], marker="o", label=f"level {lv}")
    ax[1].set_xlabel("epoch")
    ax[1].set_ylabel("held-out label consistency")
    ax[1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def train(cfg: TrainConfig, out_dir: Path, resume: bool = False, progress: bool = True) -> TrainResult:
    """Train per `cfg` into `out_dir`; `resume` continues from `out_dir/checkpoint.pt`."""
    if cfg.mode == "geometry":
        return train_geometry.train(cfg, out_dir, resume, progress)
    t0 = time.perf_counter()
    out_dir, device = start_run(cfg, out_dir)
    train_ps, held_ps = load_pairs(cfg, "train"), load_pairs(cfg, "heldout")
    log.info("%d training pairs over %d images, %d held-out pairs", len(train_ps), len(train_ps.images), len(held_ps))
    net = SegLocNet(cfg.model).to(device)
    opt, sched = make_optimizer(net, cfg)
    ckpt_path = out_dir / "checkpoint.pt"
    rows: list[dict] = []
    start_epoch = 0
    fgsn = _Fgsn() if cfg.mode == "fgsn" else None
    warm: list[torch.Tensor] = []
    ck = resume_checkpoint(ckpt_path, cfg, net, opt, sched, device) if resume else None
    if ck is not None:
        warm = [c.to(device) for c in ck["warm_centers"]]
        start_epoch, rows = ck["epoch"], ck["rows"]
    elif cfg.mode == "segloc":
        # k-means prototypes of the initial features: warm-up targets (Eq. 4) and head initialisation.
        net.train()
        keys = sorted(train_ps.images)[: cfg.optim.kmeans_images]
        feats = level_features(net, train_ps, keys, cfg.optim.pixels_per_image, device, cfg.optim.seed)
        with torch.no_grad():
            for lv, x in enumerate(feats):
                c = torch.from_numpy(kmeans(x, cfg.model.num_classes, cfg.optim.seed)).to(device)
                warm.append(c)
                net.heads[lv].weight.copy_((c / cfg.loss.head_tau)[:, :, None, None])
                net.heads[lv].bias.zero_()
    if fgsn is not None and start_epoch < cfg.optim.epochs:
        fgsn.recluster(net, train_ps, cfg, device, start_epoch * cfg.optim.steps_per_epoch)
    net.train()
    for epoch in range(start_epoch, cfg.optim.epochs):
        rng = np.random.default_rng([cfg.optim.seed, epoch])
        gen = torch.Generator().manual_seed(cfg.optim.seed * 1000 + epoch)
        sums: dict[str, float] = {}
        te = time.perf_counter()
        bar = progress_bar(range(cfg.optim.steps_per_epoch), desc=f"epoch {epoch + 1}/{cfg.optim.epochs}",
                   enabled=progress, leave=False)
        for it in bar:
            step = epoch * cfg.optim.steps_per_epoch + it
            if fgsn is not None and step > 0 and step % cfg.fgsn.recluster_every == 0:
                fgsn.recluster(net, train_ps, cfg, device, step)
            idx = list(rng.choice(len(train_ps), min(cfg.optim.batch_pairs, len(train_ps)), replace=False))
            batch = _batch(train_ps, idx, cfg.optim.corr_per_pair, rng, device)
            loss, logs = _step_losses(net, batch, cfg, epoch, warm, fgsn, gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 5.0)
            opt.step()
            sched.step()
            for k, v in logs.items():
                sums[k] = sums.get(k, 0.0) + v
            bar.set_postfix(loss=f"{logs['loss']:.3f}")
        row = {"epoch": epoch + 1, "step": (epoch + 1) * cfg.optim.steps_per_epoch,
               "epoch_seconds": round(time.perf_counter() - te, 1), "lr": sched.get_last_lr()[0]}
        row.update({k: v / cfg.optim.steps_per_epoch for k, v in sums.items()})
        consistency, usage = label_consistency(net, held_ps, device)
        for lv in range(4):
            row[f"heldout_consistency_{lv}"] = consistency[lv]
            row[f"heldout_label_entropy_{lv}"] = usage[lv]
        rows.append(row)
        log.info("epoch %d: %s", epoch + 1, {k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()})
        torch.save({"model": net.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                    "epoch": epoch + 1, "rows": rows, "config": cfg.to_dict(), "warm_centers": warm}, ckpt_path)
        write_epoch_logs(rows, out_dir, _plot)
    return finish_run(net, cfg, out_dir, rows, t0, {"train_pairs": len(train_ps), "heldout_pairs": len(held_ps)})


def _run(args: argparse.Namespace) -> int:
    cfg = TrainConfig.load(args.config)
    if args.epochs is not None:
        cfg = TrainConfig.from_dict({**cfg.to_dict(), "optim": {**asdict(cfg.optim), "epochs": args.epochs}})
    if (args.label_set or args.init) and cfg.mode != "geometry":
        raise InputError("--label-set and --init are for mode: geometry")
    if args.init is not None:
        if not args.init.is_file():
            raise InputError(f"--init {args.init}: no such file")
        cfg = TrainConfig.from_dict({**cfg.to_dict(), "geometry": {**cfg.to_dict()["geometry"],
                                                                   "init_weights": str(args.init)}})
    if args.label_set is not None:
        if not args.label_set.is_file():
            from segloc_core.net.label_set import save_label_set

            save_label_set(train_geometry.load_data(cfg, progress=True), args.label_set)
        cfg = TrainConfig.from_dict({**cfg.to_dict(), "geometry": {**cfg.to_dict()["geometry"],
                                                                   "label_set": str(args.label_set)}})
    res = train(cfg, args.out, resume=args.resume)
    print(json.dumps({"weights": str(res.weights), "config": str(res.config), "metrics": str(res.metrics),
                      "plot": str(res.plot), "seconds": round(res.seconds, 1), "final": res.final}))
    return 0


def configure_cli(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, required=True,
                        help=f"training YAML (a path, or a name in {CONFIG_DIR}, e.g. segloc_default.yaml)")
    parser.add_argument("--out", type=Path, required=True, help="output folder (checkpoint, model.pt, metrics)")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    parser.add_argument("--epochs", type=int, default=None, help="override optim.epochs")
    parser.add_argument("--init", type=Path, default=None,
                        help="mode geometry: start from these weights (model.pt or a checkpoint.pt of the same shape)")
    parser.add_argument("--label-set", type=Path, default=None,
                        help="mode geometry: train on this saved label set (.npz); built and saved there first "
                             "if it does not exist (a cache, and what a GPU machine without a renderer needs)")
    parser.set_defaults(func=_run)
