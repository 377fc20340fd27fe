"""The behaviour-aware VQ-VAE (spec §2, paper §2.2 and App. C).

x (403) → encoder → z_e (96) → nearest of K codes → z_q (96, straight-through) → decoder → x̂ (403)
                                                     └→ three linear aux heads (3 classes each)

The quantizer is written here rather than taken from vector-quantize-pytorch (not installed, and
its k-means init is Lloyd's k-means with random seeding, not k-means++; its EMA keeps running
sums (Laplace-smoothed cluster sizes), not the paper's e_k ← γ e_k + (1−γ) z̄_k; and its dead-code
replacement uses a fixed count threshold, not α·mean(n̂) after a warm-up). Writing these three
rules takes ~60 lines and keeps them testable one by one.

Reads top-down: config, k-means++ seeding, the quantizer, the MLPs, the full model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from simpersona.contracts.labels import HEADS


@dataclass
class ModelConfig:
    # width of the buyer vector (features layout INPUT_DIM)
    input_dim: int = 403
    # encoder hidden widths (each Linear→ReLU→Dropout); the decoder mirrors them
    hidden: tuple[int, ...] = (256, 128)
    # latent and code dimension
    latent_dim: int = 96
    # number of codebook entries K
    codebook_size: int = 256
    # dropout probability after each hidden ReLU
    dropout: float = 0.1
    # EMA decay γ for code vectors and usage counts
    ema_decay: float = 0.9
    # a code is dead when its EMA usage n̂_k < dead_alpha · mean(n̂)
    dead_alpha: float = 0.1
    # no dead-code reset before this many optimisation steps
    dead_warmup_steps: int = 100
    # check for dead codes every this many steps (after the warm-up)
    dead_every: int = 50
    # std of the Gaussian noise added to an encoder output that re-initialises a dead code
    reset_noise_std: float = 0.01
    # classes per auxiliary head (low / medium / high)
    n_classes: int = 3


def kmeans_pp(z: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """k-means++ seeding (Arthur & Vassilvitskii 2007): k rows of z, each next one drawn with
    probability ∝ squared distance to the nearest already chosen. z (N, D) → (k, D)."""
    n = z.shape[0]
    first = int(torch.randint(n, (1,), generator=generator))
    centers = [z[first]]
    d2 = ((z - z[first]) ** 2).sum(1)  # (N,)
    for _ in range(1, k):
        total = d2.sum()
        probs = d2 / total if total > 0 else torch.full_like(d2, 1.0 / n)
        nxt = int(torch.multinomial(probs.double(), 1, generator=generator))
        centers.append(z[nxt])
        d2 = torch.minimum(d2, ((z - z[nxt]) ** 2).sum(1))
    return torch.stack(centers)  # (k, D)


class EMAQuantizer(nn.Module):
    """Codebook of K entries in R^D, updated by EMA (not by gradients), with dead-code reset."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.register_buffer("codebook", torch.zeros(cfg.codebook_size, cfg.latent_dim))  # (K, D)
        self.register_buffer("usage", torch.ones(cfg.codebook_size))  # (K,) EMA counts n̂_k

    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        """Index of the nearest entry by squared L2. z (B, D) → (B,)"""
        e = self.codebook
        d = (e * e).sum(1) - 2.0 * z @ e.T  # (B, K); ||z||² is constant per row
        return d.argmin(1)

    def forward(self, z_e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(codes (B,), z_q (B, D)) with straight-through gradients: z_q = z_e + sg(e_k − z_e)."""
        codes = self.nearest(z_e.detach())
        e = self.codebook[codes]  # (B, D)
        return codes, z_e + (e - z_e).detach()

    @torch.no_grad()
    def init_kmeans_pp(self, z: torch.Tensor, generator: torch.Generator, batch_size: int) -> None:
        """Seed the codebook by k-means++ over encoder outputs z (N, D) from a full pass; usage
        counts start at each entry's share of z scaled to one batch (the scale of n̂)."""
        self.codebook.copy_(kmeans_pp(z, self.cfg.codebook_size, generator))
        counts = torch.bincount(self.nearest(z), minlength=self.cfg.codebook_size).to(z.dtype)
        self.usage.copy_(counts * (batch_size / z.shape[0]))

    @torch.no_grad()
    def ema_update(self, z_e: torch.Tensor, codes: torch.Tensor) -> None:
        """e_k ← γ e_k + (1−γ) z̄_k for entries hit in this batch; n̂_k ← γ n̂_k + (1−γ) n_k for all."""
        g = self.cfg.ema_decay
        counts = torch.bincount(codes, minlength=self.cfg.codebook_size).to(z_e.dtype)  # (K,)
        sums = torch.zeros_like(self.codebook).index_add_(0, codes, z_e)  # (K, D)
        hit = counts > 0
        mean = sums[hit] / counts[hit, None]
        self.codebook[hit] = g * self.codebook[hit] + (1 - g) * mean
        self.usage.mul_(g).add_((1 - g) * counts)

    def due_for_reset(self, step: int) -> bool:
        """Dead-code check at `step` (1-based count of optimisation steps done)?"""
        return step > self.cfg.dead_warmup_steps and step % self.cfg.dead_every == 0

    @torch.no_grad()
    def reset_dead(self, z_e: torch.Tensor, codes: torch.Tensor, generator: torch.Generator) -> int:
        """Re-initialise dead entries (n̂_k < α·mean n̂) from random active encoder outputs (rows of
        this batch assigned to live entries) plus noise; their counts are reset to mean(n̂), so a
        fresh entry is not declared dead again before it had a chance. Returns how many."""
        mean = self.usage.mean()
        dead = self.usage < self.cfg.dead_alpha * mean  # (K,)
        n_dead = int(dead.sum())
        if n_dead == 0:
            return 0
        active = ~dead[codes]  # (B,)
        pool = z_e[active] if bool(active.any()) else z_e
        pick = torch.randint(pool.shape[0], (n_dead,), generator=generator)
        noise = torch.randn(n_dead, pool.shape[1], generator=generator) * self.cfg.reset_noise_std
        self.codebook[dead] = pool[pick] + noise
        self.usage[dead] = mean
        return n_dead


def mlp(widths: list[int], dropout: float) -> nn.Sequential:
    """Linear→ReLU→Dropout blocks between consecutive widths; the last layer is a plain Linear."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(widths) - 2:
            layers += [nn.ReLU(), nn.Dropout(dropout)]
    return nn.Sequential(*layers)


@dataclass
class VQOutput:
    z_e: torch.Tensor  # (B, D) encoder output
    z_q: torch.Tensor  # (B, D) quantised, straight-through
    codes: torch.Tensor  # (B,) code index
    x_hat: torch.Tensor  # (B, 403) reconstruction
    logits: dict[str, torch.Tensor]  # head → (B, 3)


class VQVAE(nn.Module):
    """Encoder 403→256→128→96, EMA codebook, mirrored decoder, three linear aux heads on z_q."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        widths = [cfg.input_dim, *cfg.hidden, cfg.latent_dim]
        self.encoder = mlp(widths, cfg.dropout)
        self.decoder = mlp(widths[::-1], cfg.dropout)
        self.quantizer = EMAQuantizer(cfg)
        self.heads = nn.ModuleDict({h: nn.Linear(cfg.latent_dim, cfg.n_classes) for h in HEADS})

    def forward(self, x: torch.Tensor) -> VQOutput:
        z_e = self.encoder(x)  # (B, D)
        codes, z_q = self.quantizer(z_e)  # (B,), (B, D)
        x_hat = self.decoder(z_q)  # (B, 403)
        logits = {h: head(z_q) for h, head in self.heads.items()}  # (B, 3) each
        return VQOutput(z_e, z_q, codes, x_hat, logits)

    @torch.no_grad()
    def encode_codes(self, x: torch.Tensor) -> torch.Tensor:
        """Code per row in eval mode (no dropout). x (B, 403) → (B,)"""
        return self.quantizer.nearest(self.encoder(x))

    @torch.no_grad()
    def code_labels(self) -> dict[str, torch.Tensor]:
        """Each head's argmax at each code vector: head → (K,) in {0, 1, 2} (a persona card's labels)."""
        e = self.quantizer.codebook
        return {h: head(e).argmax(1) for h, head in self.heads.items()}
