"""VQ-VAE losses with a named breakdown (spec §2, paper App. D).

L = λ_r L_recon + β L_commit + λ_c L_contrastive + λ_a (L_engage + L_explore + L_purchase)

Choices written down here (the paper is silent):
- L_recon averages four groups (scalars; viewed, carted, purchased channels); a channel group
  counts only over buyers whose mask is 1 and only when at least one such buyer is in the batch.
  The 3 mask dimensions are inputs, not reconstruction targets.
- L_commit = mean over batch and dimensions of (z_e − sg(z_q))².
- InfoNCE: anchor i has up to F positives (the three gates); its loss is the mean of −log p over
  them (the expectation of Eq. 9 with i+ drawn uniformly from the F), each term with all non-self
  batch samples in the denominator. Anchors without a same-signature peer in the batch are skipped.
- Weighted CE: mean over the batch of w_{y_i} · (−log p̂_{y_i}) (Eq. 11 averaged over buyers;
  not torch's weighted mean, which divides by Σ w).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from simpersona.features.layout import CHANNEL_SLICES, MASKS, N_SCALARS, SCALAR_NAMES, SCALARS
from simpersona.vqvae.model import HEADS, VQOutput

# the behavioural filter's features (gate 3): exploration and engagement scalars
BEHAVIOUR_FEATURES: tuple[str, ...] = (
    "total_product_views",
    "sessions_with_search",
    "sessions_with_collection",
    "total_duration_s",
)
BEHAVIOUR_IDX: list[int] = [SCALAR_NAMES.index(n) for n in BEHAVIOUR_FEATURES]
PRODUCT_SPAN = slice(N_SCALARS, CHANNEL_SLICES[-1].stop)  # the three product channels, 16:400


@dataclass
class LossConfig:
    # λ_r, weight of the reconstruction loss
    recon_weight: float = 0.3
    # β, weight of the commitment loss
    commit_beta: float = 0.75
    # λ_c, weight of the InfoNCE loss
    contrastive_weight: float = 0.15
    # λ_a, weight of the sum of the three auxiliary losses
    aux_weight: float = 0.5
    # τ, InfoNCE temperature
    temperature: float = 0.1
    # M, peers kept by the product filter (gate 2)
    top_m: int = 10
    # F, peers kept by the behavioural filter (gate 3); positives per anchor
    top_f: int = 3


@dataclass
class LossParts:
    recon: torch.Tensor
    commit: torch.Tensor
    contrastive: torch.Tensor
    engage: torch.Tensor
    explore: torch.Tensor
    purchase: torch.Tensor
    total: torch.Tensor

    def as_floats(self) -> dict[str, float]:
        return {k: float(v.detach()) for k, v in self.__dict__.items()}


def recon_loss(x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Group-aware reconstruction: MSE on scalars, masked cosine distance per channel, group mean."""
    groups = [F.mse_loss(x_hat[:, SCALARS], x[:, SCALARS])]
    masks = x[:, MASKS]  # (B, 3)
    for c, sl in enumerate(CHANNEL_SLICES):
        m = masks[:, c]  # (B,)
        if bool(m.sum() > 0):
            dist = 1.0 - F.cosine_similarity(x_hat[:, sl], x[:, sl], dim=1)  # (B,)
            groups.append((dist * m).sum() / m.sum())
    return torch.stack(groups).mean()


@torch.no_grad()
def mine_positives(
    signature: torch.Tensor, products: torch.Tensor, behaviour: torch.Tensor, top_m: int, top_f: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Three gates: same funnel signature → top-M by product cosine → top-F by behavioural distance.

    signature (B,), products (B, P), behaviour (B, 4) → positives (B, F') indices and valid (B, F')
    mask, F' = min(F, M, B−1). A slot is invalid when the anchor has fewer same-signature peers.
    """
    b = signature.shape[0]
    m = min(top_m, b - 1)
    f = min(top_f, m)
    same = signature[:, None] == signature[None, :]  # (B, B)
    same.fill_diagonal_(False)
    p = F.normalize(products, dim=1)
    cos = (p @ p.T).masked_fill(~same, float("-inf"))  # (B, B)
    cand_cos, cand = cos.topk(m, dim=1)  # (B, M)
    dist = torch.cdist(behaviour, behaviour).gather(1, cand)  # (B, M)
    dist = dist.masked_fill(~torch.isfinite(cand_cos), float("inf"))
    best_dist, pick = dist.topk(f, dim=1, largest=False)  # (B, F)
    return cand.gather(1, pick), torch.isfinite(best_dist)


def info_nce(z: torch.Tensor, positives: torch.Tensor, valid: torch.Tensor, tau: float) -> torch.Tensor:
    """InfoNCE on cosine similarity / τ; denominator all non-self samples. z (B, D)."""
    zn = F.normalize(z, dim=1)
    sim = (zn @ zn.T) / tau  # (B, B)
    sim = sim.masked_fill(torch.eye(z.shape[0], dtype=torch.bool), float("-inf"))
    logp = sim - torch.logsumexp(sim, dim=1, keepdim=True)  # (B, B)
    lp = logp.gather(1, positives)  # (B, F)
    n = valid.sum()
    if int(n) == 0:
        return z.sum() * 0.0
    return -(lp.masked_fill(~valid, 0.0)).sum() / n


def aux_class_weights(labels: torch.Tensor, n_classes: int = 3) -> torch.Tensor:
    """Inverse-frequency weights w_c = N / (n_classes · n_c); an empty class gets weight 0.

    >>> [round(w, 4) for w in aux_class_weights(torch.tensor([0, 0, 0, 1, 2, 2])).tolist()]
    [0.6667, 2.0, 1.0]
    """
    counts = torch.bincount(labels, minlength=n_classes).float()
    w = labels.numel() / (n_classes * counts.clamp(min=1))
    return torch.where(counts > 0, w, torch.zeros_like(w))


def weighted_ce(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Mean over buyers of w_{y} · (−log softmax(logits)_y)."""
    nll = F.cross_entropy(logits, labels, reduction="none")  # (B,)
    return (weights[labels] * nll).mean()


def compute_losses(
    out: VQOutput, x: torch.Tensor, signature: torch.Tensor, labels: torch.Tensor,
    class_weights: torch.Tensor, cfg: LossConfig,
) -> LossParts:
    """All parts and the weighted total. labels (B, 3) in HEADS order; class_weights (3, 3)."""
    recon = recon_loss(out.x_hat, x)
    commit = F.mse_loss(out.z_e, out.z_q.detach())
    pos, valid = mine_positives(signature, x[:, PRODUCT_SPAN], x[:, BEHAVIOUR_IDX], cfg.top_m, cfg.top_f)
    contrastive = info_nce(out.z_e, pos, valid, cfg.temperature)
    aux = {h: weighted_ce(out.logits[h], labels[:, i], class_weights[i]) for i, h in enumerate(HEADS)}
    total = (
        cfg.recon_weight * recon
        + cfg.commit_beta * commit
        + cfg.contrastive_weight * contrastive
        + cfg.aux_weight * (aux["engage"] + aux["explore"] + aux["purchase"])
    )
    return LossParts(recon, commit, contrastive, aux["engage"], aux["explore"], aux["purchase"], total)
