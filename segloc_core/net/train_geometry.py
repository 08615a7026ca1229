"""Geometry-label training (`segloc train`, `mode: geometry`): the network learns to name the place.

Why: the self-supervised objective was satisfied by labels that follow the image position (the
ceiling issue's measurements), and labels of semantic scale cannot localize along a street; what
localizes is labels that are specific to 1-5 m of the world and the same under every condition
(oracle study). So the targets here are exactly such labels, computed from the mapping data's
geometry (`segloc_core.net.label_set`: the hash of the world cell each pixel sees), and the network is
a scene-specific classifier, as in hierarchical scene-coordinate classification (HSCNet) and ACE.
Its weights encode the mapped place; see the README on privacy.

Each step: a batch of labelled views, randomly scaled, shifted and rotated (labels follow with
nearest sampling, outside = ignored) and photometrically distorted (gamma, exposure down to night
levels, colour mixing, noise); per decoder level, cross-entropy against the labels' area-pooled
distribution in each output pixel, weighted by the labelled share of the pixel. The coarse heads
are deep supervision (inference publishes the finest head's probabilities on every level).
The GPO rank weights are not trained here (retrieval reads the label histograms).
Checkpoints after every epoch (`resume` continues), per-epoch held-out accuracy, a plot.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from segloc_core.errors import InputError
from segloc_core.net.label_set import IGNORE, LabelSet, load_label_set, world_label_set
from segloc_core.net.model import SegLocNet, load_state_dict
from segloc_core.net.pairs import resize_image
from segloc_core.net.train_config import TrainConfig, TrainResult
from segloc_core.net.train_outputs import finish_run, make_optimizer, resume_checkpoint, start_run, write_epoch_logs
from segloc_core.place_labels import PlaceCells
from segloc_core.progress import progress_bar

log = logging.getLogger(__name__)


def label_spec(cfg: TrainConfig) -> PlaceCells:
    """The place cells whose labels the network learns (also in its config: `model.place_cells`)."""
    return PlaceCells.parse(cfg.model.place_cells)


def load_data(cfg: TrainConfig, progress: bool) -> LabelSet:
    g = cfg.geometry
    if g.label_set:
        return load_label_set(Path(g.label_set))
    if cfg.data.source != "world":
        raise InputError("mode geometry trains on a rendered world (data.source: world) or a saved geometry.label_set")
    from segloc_core.paths import world_dir
    from segloc_core.world import load_world

    path = Path(cfg.data.world) if "/" in cfg.data.world else world_dir(cfg.data.world)
    conds = list(cfg.data.conditions or load_world(path).conditions)
    return world_label_set(path, conds, label_spec(cfg), g.material, g.jitter_views, g.shift_m, g.turn_deg,
                           cfg.optim.seed, progress, tuple(g.extra_conditions))


def resized(ls: LabelSet, size_wh: tuple[int, int]) -> LabelSet:
    """The set at the model's input size (images area-averaged, labels nearest)."""
    import cv2

    if ls.images.shape[2:0:-1] == tuple(size_wh):
        return ls
    images = np.stack([resize_image(im, size_wh)[0] for im in ls.images])
    labels = np.stack([cv2.resize(lb, size_wh, interpolation=cv2.INTER_NEAREST) for lb in ls.labels])
    return LabelSet(images, labels, ls.names, ls.T_world_cam)


def split(ls: LabelSet, every: int) -> tuple[LabelSet, LabelSet]:
    """Held out: every `every`-th source frame of each condition, with its re-rendered views."""
    frame = np.array([int(n.split("/")[1]) for n in ls.names])
    held = frame % every == every // 2
    return ls.subset(np.flatnonzero(~held)), ls.subset(np.flatnonzero(held))


def augment_geometry(imgs: torch.Tensor, labels: torch.Tensor, gen: torch.Generator,
                     scale_range: tuple[float, float], rotate_deg: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Random zoom / shift / rotation of (B,3,H,W) images and (B,H,W) labels (nearest; IGNORE outside)."""
    b, dev = imgs.shape[0], imgs.device
    r = lambda: torch.rand(b, generator=gen).to(dev)  # noqa: E731
    lo, hi = math.log(scale_range[0]), math.log(scale_range[1])
    s = torch.exp(lo + (hi - lo) * r())
    a = torch.deg2rad((2 * r() - 1) * rotate_deg)
    slack = (1 - 1 / s).abs() + 0.05
    tx, ty = (2 * r() - 1) * slack, (2 * r() - 1) * slack
    theta = torch.stack([torch.stack([torch.cos(a) / s, -torch.sin(a) / s, tx], 1),
                         torch.stack([torch.sin(a) / s, torch.cos(a) / s, ty], 1)], 1)
    grid = F.affine_grid(theta, list(imgs.shape), align_corners=False)
    out = F.grid_sample(imgs, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    lab = F.grid_sample((labels.float() + 1)[:, None], grid, mode="nearest", padding_mode="zeros",
                        align_corners=False)[:, 0].long() - 1
    lab[lab < 0] = IGNORE
    return out, lab


def augment_photometric(imgs: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Appearance far beyond the training conditions: gamma 0.5-2.5, exposure x0.06-1.4 (night
    frames are ~10x darker than day ones), colour mixing, a grey image in 15 %, sensor noise, 8-bit
    quantisation."""
    b, dev = imgs.shape[0], imgs.device
    r = lambda *s: torch.rand(*s, generator=gen).to(dev)  # noqa: E731
    x = (imgs / 255.0).clamp(1e-4, 1.0)
    x = x ** torch.exp(math.log(0.5) + (math.log(2.5) - math.log(0.5)) * r(b, 1, 1, 1))
    mix = torch.eye(3, device=dev) + 0.12 * torch.randn(b, 3, 3, generator=gen).to(dev)
    x = torch.einsum("bij,bjhw->bihw", mix, x)
    grey = (r(b, 1, 1, 1) < 0.15).float()
    x = grey * x.mean(1, keepdim=True).expand_as(x) + (1 - grey) * x
    x = x * torch.exp(math.log(0.06) + (math.log(1.4) - math.log(0.06)) * r(b, 1, 1, 1))
    x = x + 0.03 * r(b, 1, 1, 1) * torch.randn(x.shape, generator=gen).to(dev)
    return torch.round(x.clamp(0, 1) * 255.0)


def pooled_targets(labels: torch.Tensor, K: int, stride: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B,K,h,w) label distribution of each output pixel (stride x stride input pixels) and (B,1,h,w)
    the labelled share of the pixel; built by scatter, not a (B,K,H,W) one-hot."""
    B, H, W = labels.shape
    h, w = H // stride, W // stride
    dev = labels.device
    cell = (torch.arange(H, device=dev) // stride)[:, None] * w + (torch.arange(W, device=dev) // stride)[None, :]
    valid = labels < K
    idx = (torch.arange(B, device=dev)[:, None, None] * K + labels.clamp(max=K - 1)) * (h * w) + cell
    counts = torch.zeros(B * K * h * w, device=dev).index_add_(0, idx[valid], torch.ones(int(valid.sum()), device=dev))
    counts = counts.view(B, K, h, w)
    total = counts.sum(1, keepdim=True)
    return counts / total.clamp(min=1), total / (stride * stride)


def level_losses(net: SegLocNet, imgs: torch.Tensor, labels: torch.Tensor) -> list[torch.Tensor]:
    out = net(imgs, dense_logits=True)
    K = net.config.num_classes
    losses = []
    for stride, level in zip(net.config.strides, out.levels):
        q, share = pooled_targets(labels, K, stride)
        ce = -(q * F.log_softmax(level.logits, dim=1)).sum(1, keepdim=True)
        losses.append((ce * share).sum() / share.sum().clamp(min=1))
    return losses


@torch.no_grad()
def accuracy(net: SegLocNet, ls: LabelSet, device: torch.device, batch: int = 16) -> list[float]:
    """Per level: share of output pixels (> half labelled) whose argmax is the majority label."""
    net.eval()
    K = net.config.num_classes
    hits, total = np.zeros(4), np.zeros(4)
    for i in range(0, len(ls), batch):
        imgs = torch.from_numpy(ls.images[i:i + batch]).to(device).permute(0, 3, 1, 2).float()
        labels = torch.from_numpy(ls.labels[i:i + batch]).to(device).long()
        out = net(imgs, dense_logits=True)
        for lv, (stride, level) in enumerate(zip(net.config.strides, out.levels)):
            q, share = pooled_targets(labels, K, stride)
            ok = share[:, 0] > 0.5
            hits[lv] += ((level.logits.argmax(1) == q.argmax(1)) & ok).sum().item()
            total[lv] += ok.sum().item()
    net.train()
    return [float(h / max(t, 1)) for h, t in zip(hits, total)]


def _plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [r["epoch"] for r in rows]
    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    for lv in range(4):
        ax[0].plot(ep, [r[f"loss_{lv}"] for r in rows], marker="o", label=f"level {lv}")
        ax[1].plot(ep, [r[f"heldout_accuracy_{lv}"] for r in rows], marker="o", label=f"level {lv}")
    ax[0].set_xlabel("epoch")
    ax[0].set_ylabel("cross-entropy (epoch mean)")
    ax[1].set_xlabel("epoch")
    ax[1].set_ylabel("held-out label accuracy (training conditions)")
    for a in ax:
        a.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def train(cfg: TrainConfig, out_dir: Path, resume: bool = False, progress: bool = True) -> TrainResult:
    """Train per `cfg` (mode geometry) into `out_dir`; `resume` continues from its checkpoint."""
    t0 = time.perf_counter()
    out_dir, device = start_run(cfg, out_dir)
    g = cfg.geometry
    data = resized(load_data(cfg, progress), (cfg.model.input_width, cfg.model.input_height))
    train_set, held = split(data, g.heldout_every)
    log.info("%d training views, %d held out", len(train_set), len(held))
    images = torch.from_numpy(train_set.images).to(device)
    labels = torch.from_numpy(train_set.labels).to(device)
    net = SegLocNet(cfg.model).to(device)
    if g.init_weights:
        load_state_dict(net, Path(g.init_weights))
    opt, sched = make_optimizer(net, cfg)
    ckpt_path = out_dir / "checkpoint.pt"
    rows: list[dict] = []
    start_epoch = 0
    ck = resume_checkpoint(ckpt_path, cfg, net, opt, sched, device) if resume else None
    if ck is not None:
        start_epoch, rows = ck["epoch"], ck["rows"]
    net.train()
    for epoch in range(start_epoch, cfg.optim.epochs):
        gen = torch.Generator().manual_seed(cfg.optim.seed * 1000 + epoch)
        sums = np.zeros(4)
        te = time.perf_counter()
        bar = progress_bar(range(cfg.optim.steps_per_epoch), desc=f"epoch {epoch + 1}/{cfg.optim.epochs}",
                   enabled=progress, leave=False)
        for _ in bar:
            idx = torch.randint(len(train_set), (cfg.optim.batch_pairs,), generator=gen).to(device)
            x = images[idx].permute(0, 3, 1, 2).float()
            x, y = augment_geometry(x, labels[idx].long(), gen, g.scale_range, g.rotate_deg)
            losses = level_losses(net, augment_photometric(x, gen), y)
            loss = sum(losses) / len(losses)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 5.0)
            opt.step()
            sched.step()
            sums += [float(v.detach()) for v in losses]
            bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
        row: dict = {"epoch": epoch + 1, "step": (epoch + 1) * cfg.optim.steps_per_epoch,
                     "epoch_seconds": round(time.perf_counter() - te, 1), "lr": sched.get_last_lr()[0]}
        row.update({f"loss_{lv}": float(v / cfg.optim.steps_per_epoch) for lv, v in enumerate(sums)})
        row.update({f"heldout_accuracy_{lv}": v for lv, v in enumerate(accuracy(net, held, device))})
        rows.append(row)
        log.info("epoch %d: %s", epoch + 1, {k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()})
        torch.save({"model": net.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                    "epoch": epoch + 1, "rows": rows, "config": cfg.to_dict()}, ckpt_path)
        write_epoch_logs(rows, out_dir, _plot)
    return finish_run(net, cfg, out_dir, rows, t0, {"train_views": len(train_set), "heldout_views": len(held),
                                                    "device": str(device)})


