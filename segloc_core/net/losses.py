"""SegLoc training losses (paper 000 Sec. 3) and FGSN's (paper 001), on batched torch tensors.

Conventions: a batch holds P image pairs stacked as images [a_0..a_{P-1}, b_0..b_{P-1}]; per level,
`features` (2P,D,h,w) are L2-normalised, `logits` (2P,K,h,w) come from the 1x1 head whose weight
rows, L2-normalised, are the prototypes c_k. Correspondences are given in input pixels (COLMAP
convention, pixel centres at +0.5) and sampled bilinearly, so every level uses the same points.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

EPS = 1e-8


def sample_points(maps: torch.Tensor, uv: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
    """Bilinear samples of maps (N,C,h,w) at uv (N,L,2) input pixels -> (N,L,C)."""
    w, h = image_size
    grid = torch.stack([uv[..., 0] / w * 2 - 1, uv[..., 1] / h * 2 - 1], dim=-1).unsqueeze(1)
    out = F.grid_sample(maps, grid.to(maps.dtype), mode="bilinear", align_corners=False)
    return out.squeeze(2).transpose(1, 2)


def prototypes(head_weight: torch.Tensor) -> torch.Tensor:
    """(K,D,1,1) conv weight -> L2-normalised prototypes (K,D)."""
    return F.normalize(head_weight.flatten(1), dim=1)


def sample_pixels(x: torch.Tensor, max_pixels: int | None, generator: torch.Generator | None = None) -> torch.Tensor:
    """(B,C,h,w) -> (B*n,C): the same random n <= max_pixels pixels of every image (gathered, no
    full-size copy), image-major so the first half of the rows comes from the first half of the batch."""
    b, c, h, w = x.shape
    flat = x.flatten(2)
    if max_pixels is not None and h * w > max_pixels:
        idx = torch.randperm(h * w, generator=generator)[:max_pixels].to(x.device)
        flat = flat.index_select(2, idx)
    return flat.transpose(1, 2).reshape(-1, c)


def sinkhorn_targets(probs: torch.Tensor, sharpen: float = 2.0, iters: int = 3) -> torch.Tensor:
    """Balanced targets (SwAV's Sinkhorn-Knopp): Q ∝ p^sharpen rescaled so every cluster receives the
    same mass over the batch and every pixel sums to 1.

    Why: trained from scratch for ~1000 CPU steps, Eq. (2) even with the uniform prior leaves ~12 of
    100 labels in use, all semantic-coarse (road / building / vegetation), so the label-alignment
    refiner slides along the road. Equipartition over the batch's pixels forces large surfaces to be
    split into many clusters, which correspondence/feature consistency then make place-specific.
    probs (N,K); returns Q (N,K) rows summing to 1, no gradient. `sharpen` = head_tau/eps of SwAV
    (logits are cosine/head_tau, so p^sharpen ∝ exp(cosine/eps))."""
    logq = sharpen * probs.detach().clamp_min(EPS).log()
    n, k = logq.shape
    logq = logq - logq.max()
    for _ in range(iters):
        logq = logq - torch.logsumexp(logq, dim=0, keepdim=True) - math.log(k)
        logq = logq - torch.logsumexp(logq, dim=1, keepdim=True) - math.log(n)
    return torch.softmax(logq, dim=1)


def target_update(probs: torch.Tensor, prior: str = "data") -> torch.Tensor:
    """Closed-form target Q of Eq. (2): q_ik ∝ d_k p_ik^2 / sqrt(sum_i p_ik^2).

    prior="data" is the paper's d = d^p (soft frequencies of the predictions); prior="uniform" is
    the original DDC balance term KL(d^q || d^u) (d constant). The paper argues against the uniform
    prior on large, pretrained-initialised training; trained from scratch for a few hundred steps
    (our CPU budget), the data prior lets a handful of clusters take over (measured: ~3 effective
    labels of 100), so the shipped config uses "uniform". probs (N,K) over all sampled pixels of the
    batch; returns Q (N,K), no gradient."""
    p = probs.detach()
    q = p * p / p.pow(2).sum(0).clamp_min(EPS).sqrt()
    if prior == "data":
        q = q * (p.sum(0) / p.shape[0])
    elif prior != "uniform":
        raise ValueError(f"target prior must be 'data' or 'uniform', got {prior!r}")
    return q / q.sum(1, keepdim=True).clamp_min(EPS)


def student_t_targets(features: torch.Tensor, centers: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """Soft assignments of Eq. (4) to fixed k-means prototypes (warm-up epoch); (N,D),(K,D) -> (N,K)."""
    d2 = torch.cdist(features.detach(), centers).pow(2)
    q = (1 + d2 / alpha).pow(-(alpha + 1) / 2)
    return q / q.sum(1, keepdim=True)


def discriminative_clustering(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Model step of Eq. (3) (cross entropy to fixed Q) and, for logging, L_DC of Eq. (1).

    logits, targets (N,K). Returns (loss to back-propagate, L_DC value).
    """
    logp = torch.log_softmax(logits, dim=1)
    ce = -(targets * logp).sum(1).mean()
    with torch.no_grad():
        q = targets
        kl_qp = (q * (q.clamp_min(EPS).log() - logp)).sum(1).mean()
        d_q = q.mean(0)
        d_p = logp.exp().mean(0)
        kl_d = (d_q * (d_q.clamp_min(EPS).log() - d_p.clamp_min(EPS).log())).sum()
        h_q = -(q * q.clamp_min(EPS).log()).sum(1).mean()
    return ce, kl_qp + kl_d + h_q


def correspondence_consistency(logits_a: torch.Tensor, logits_b: torch.Tensor,
                               s_a: torch.Tensor, s_b: torch.Tensor) -> torch.Tensor:
    """L_CC: each side predicts the other side's hard prototype label. logits (N,K), labels (N,)."""
    return 0.5 * (F.cross_entropy(logits_a, s_b) + F.cross_entropy(logits_b, s_a))


def concentrations(features: torch.Tensor, centers: torch.Tensor, mean_phi: float = 0.1) -> torch.Tensor:
    """phi_k: ProtoNCE concentration from the batch (mean distance to c_k, damped for small clusters),
    rescaled to mean `mean_phi` (as ProtoNCE does); empty clusters get the mean."""
    with torch.no_grad():
        sim = features @ centers.T
        assign = sim.argmax(1)
        dist = (features - centers[assign]).norm(dim=1)
        k = centers.shape[0]
        count = torch.zeros(k, device=features.device).index_add_(0, assign, torch.ones_like(dist))
        total = torch.zeros(k, device=features.device).index_add_(0, assign, dist)
        phi = total / (count * torch.log(count + 10)).clamp_min(EPS)
        used = count > 1
        phi = torch.where(used, phi, phi[used].mean() if used.any() else torch.ones_like(phi))
        return phi.clamp_min(EPS) * (mean_phi / phi.mean())


def prototypical_cross_contrastive(f_a: torch.Tensor, f_b: torch.Tensor, s_a: torch.Tensor, s_b: torch.Tensor,
                                   centers: torch.Tensor, phi: torch.Tensor) -> torch.Tensor:
    """L_PC: feature of a at u is pulled to b's prototype at v and vice versa, against all prototypes.

    The paper writes the log-likelihood; we minimise its negative. f (N,D), s (N,), centers (K,D)."""
    la = (f_a @ centers.T) / phi
    lb = (f_b @ centers.T) / phi
    return 0.5 * (F.cross_entropy(la, s_b) + F.cross_entropy(lb, s_a))


def feature_consistency(f_a: torch.Tensor, f_b: torch.Tensor, tau: float = 0.07) -> torch.Tensor:
    """L_FC (Eq. 5): InfoNCE, positive = the corresponding point, negatives = the pair's other points.

    f_a, f_b (P,L,D) per pair."""
    logits = torch.einsum("pld,pmd->plm", f_a, f_b) / tau
    target = torch.arange(f_a.shape[1], device=f_a.device).expand(f_a.shape[0], -1)
    return F.cross_entropy(logits.flatten(0, 1), target.flatten())


def pose_masks(T_world_cam: torch.Tensor, pos_m: float = 5.0, pos_deg: float = 20.0,
               neg_m: float = 10.0, neg_deg: float = 45.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Positive / negative image masks (B,B) from camera poses (B,4,4): close in position and viewing
    direction = positive; far in either = negative; in between = ignored."""
    centers = T_world_cam[:, :3, 3]
    axes = T_world_cam[:, :3, 2]
    dist = torch.cdist(centers, centers)
    ang = torch.rad2deg(torch.arccos((axes @ axes.T).clamp(-1, 1)))
    eye = torch.eye(len(centers), dtype=torch.bool, device=centers.device)
    pos = (dist < pos_m) & (ang < pos_deg) & ~eye
    neg = (dist > neg_m) | (ang > neg_deg)
    return pos, neg


def multi_similarity(desc: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, alpha_pos: float = 2.0,
                     alpha_neg: float = 50.0, lam: float = 0.5, margin: float = 0.1) -> torch.Tensor:
    """Multi-similarity loss with its semi-hard pair mining by descriptor similarity.

    desc (B,D) (L2-normalised here); pos/neg (B,B) masks from camera positions (`pose_masks`).
    A negative is kept if more similar than the anchor's least similar positive minus `margin`,
    a positive if less similar than the most similar negative plus `margin`."""
    d = F.normalize(desc, dim=1)
    sim = d @ d.T
    big = torch.tensor(1e4, device=d.device)
    min_pos = torch.where(pos, sim, big).min(1, keepdim=True).values
    max_neg = torch.where(neg, sim, -big).max(1, keepdim=True).values
    pos_kept = pos & (sim < max_neg + margin)
    neg_kept = neg & (sim > min_pos - margin)
    has = pos.any(1) & neg.any(1)
    if not has.any():
        return desc.sum() * 0
    pos_term = torch.log1p((torch.exp(-alpha_pos * (sim - lam)) * pos_kept).sum(1)) / alpha_pos
    neg_term = torch.log1p((torch.exp(alpha_neg * (sim - lam)) * neg_kept).sum(1)) / alpha_neg
    return (pos_term + neg_term)[has].mean()


def fgsn_class_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """FGSN L_class: per-pixel cross entropy to k-means labels. logits (N,K), labels (N,)."""
    return F.cross_entropy(logits, labels)


def fgsn_corr_loss(logits_r: torch.Tensor, logits_t: torch.Tensor, labels_r: torch.Tensor) -> torch.Tensor:
    """FGSN L_corr (Eq. 3): both the reference and the target point predict the reference's label."""
    return F.cross_entropy(logits_r, labels_r) + F.cross_entropy(logits_t, labels_r)


def entropy_normalised(probs: torch.Tensor) -> float:
    """Entropy of the mean class distribution / log K (1 = all clusters used evenly); a health metric."""
    d = probs.detach().mean(0)
    return float(-(d * d.clamp_min(EPS).log()).sum() / math.log(probs.shape[1]))
