"""Persona tokens: K special tokens `<|persona_0|>` … `<|persona_{K-1}|>` and their embedding rows.

The embedding matrices are resized to exactly `len(tokenizer)` (no `pad_to_multiple_of`: padding
rows never train). The K new input rows start as one of:

- `mean`      the mean of the existing input rows (default; the usual choice);
- `codebook`  the paper's open direction: a ridge projection W fitted from the VQ-VAE codebook
              space (K×96) to the LM embedding space on pairs (code vector e_k → mean input
              embedding of persona card k's text), applied to every e_k — so codes without a card,
              or seen rarely, still land near behaviourally similar codes;
- `card`      the mean input embedding of each persona card's text (codes without a card: mean);
- `random`    the paper's choice: each row drawn from N(0, σ²), σ the standard deviation of the
              existing rows' entries, from a generator seeded with `seed`.

With too few cards (`min_cards`), `codebook` and `card` fall back to `mean` and say so in the
returned info (written to meta.json). A tied output matrix (SmolLM2) shares the rows; an untied
one (Qwen3) gets the mean output row for the new tokens.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from tokenizers import AddedToken

from simpersona.contracts.labels import STRATUM_NAMES
from simpersona.contracts.persona import persona_token

INITS = ("mean", "codebook", "card", "random")


def load_codebook(vqvae_dir: Path) -> torch.Tensor:
    """The codebook (K, 96) from a VQ-VAE run folder's model.safetensors."""
    from safetensors.torch import load_file

    weights = load_file(str(Path(vqvae_dir) / "model.safetensors"))
    keys = [k for k in weights if k.endswith("codebook")]
    if len(keys) != 1:
        raise FileNotFoundError(f"{vqvae_dir}/model.safetensors: expected one '*codebook' tensor, found {keys}")
    return weights[keys[0]].float()  # (K, 96)


def load_cards(path: Path) -> dict[int, dict[str, Any]]:
    """code → card, from cards.json (or a personas folder holding it)."""
    path = Path(path)
    if path.is_dir():
        path = path / "cards.json"
    return {int(c["code"]): c for c in json.loads(path.read_text())}


def card_text(card: dict[str, Any]) -> str:
    """A persona card as plain English (its `description` if it has one)."""
    if card.get("description"):
        return str(card["description"])
    parts = []
    if card.get("labels"):
        lab = card["labels"]
        parts.append(f"Engagement {lab.get('engage')}, exploration {lab.get('explore')}, purchase intensity {lab.get('purchase')}.")
    if card.get("strata"):
        names = STRATUM_NAMES
        mix = ", ".join(f"{100 * p:.0f}% {names.get(s, s)}" for s, p in sorted(card["strata"].items(), key=lambda x: -x[1]) if p > 0)
        parts.append(f"Mostly {mix}.")
    if card.get("centroid"):
        parts.append("On average: " + ", ".join(f"{k.replace('_', ' ')} {v:.3g}" for k, v in card["centroid"].items()) + ".")
    for field, items in (card.get("top") or {}).items():
        parts.append(f"Frequent {field}: " + ", ".join(str(it) for it, _ in items[:5]) + ".")
    return " ".join(parts) or f"persona {card.get('code')}"


@torch.no_grad()
def text_embedding(emb: torch.Tensor, tokenizer, text: str) -> torch.Tensor:
    """Mean input-embedding row over the tokens of `text`. emb (V, d) → (d,)"""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return emb[torch.tensor(ids)].float().mean(0)  # (d,)


def fit_projection(x: torch.Tensor, y: torch.Tensor, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Ridge regression y ≈ x W + b (intercept not penalised), closed form in float64.
    x (n, p), y (n, d) → W (p, d), b (d,)"""
    x, y = x.double(), y.double()
    xm, ym = x.mean(0), y.mean(0)  # (p,), (d,)
    xc, yc = x - xm, y - ym  # (n, p), (n, d)
    p = x.shape[1]
    w = torch.linalg.solve(xc.T @ xc + alpha * torch.eye(p, dtype=x.dtype), xc.T @ yc)  # (p, d)
    return w.float(), (ym - xm @ w).float()


def add_persona_tokens(
    model, tokenizer, k: int, init: str = "mean", codebook: torch.Tensor | None = None,
    cards: dict[int, dict] | None = None, ridge_alpha: float = 1.0, min_cards: int = 2, seed: int = 0,
) -> tuple[list[int], dict[str, Any]]:
    """Add the K persona tokens (special, never split), resize the embeddings to len(tokenizer),
    initialise the new rows; returns (token ids in code order, info for meta.json)."""
    if init not in INITS:
        raise ValueError(f"persona init {init!r}: one of {list(INITS)}")
    tokens = [persona_token(i) for i in range(k)]
    tokenizer.add_tokens([AddedToken(t, special=True, normalized=False, single_word=False) for t in tokens], special_tokens=True)
    ids = tokenizer.convert_tokens_to_ids(tokens)
    n_old = model.get_input_embeddings().weight.shape[0]
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    emb = model.get_input_embeddings().weight  # (V, d)
    base = emb.data[: min(n_old, min(ids))]  # (V_old, d): rows of the tokens that existed before
    rows = base.float().mean(0, keepdim=True).repeat(k, 1)  # (K, d) mean init
    info: dict[str, Any] = {"k": k, "init_requested": init, "init": "mean", "token_ids": [ids[0], ids[-1]]}
    have = {c: card for c, card in (cards or {}).items() if 0 <= c < k}
    if init == "random":
        sigma = float(base.float().std())
        rows = torch.randn(k, base.shape[1], generator=torch.Generator().manual_seed(seed)) * sigma  # (K, d)
        info.update(init="random", sigma=sigma, seed=seed)
    elif init in ("codebook", "card") and len(have) < min_cards:
        info["fallback"] = f"{init} init needs ≥ {min_cards} persona cards, found {len(have)}: used mean"
    elif init == "card":
        for c, card in have.items():
            rows[c] = text_embedding(base, tokenizer, card_text(card))  # (d,)
        info.update(init="card", cards_used=len(have))
    elif init == "codebook":
        if codebook is None or codebook.shape[0] != k:
            raise ValueError(f"codebook init needs the VQ-VAE codebook with K = {k} rows, got "
                             f"{None if codebook is None else tuple(codebook.shape)}")
        codes = sorted(have)
        targets = torch.stack([text_embedding(base, tokenizer, card_text(have[c])) for c in codes])  # (n, d)
        w, b = fit_projection(codebook[codes], targets, ridge_alpha)  # (96, d), (d,)
        rows = codebook.float() @ w + b  # (K, d)
        fit = ((codebook[codes] @ w + b - targets) ** 2).sum() / ((targets - targets.mean(0)) ** 2).sum().clamp_min(1e-12)
        info.update(init="codebook", cards_used=len(codes), ridge_alpha=ridge_alpha, train_r2=float(1 - fit))
    with torch.no_grad():
        emb[ids] = rows.to(emb.dtype)
        out = model.get_output_embeddings()
        if out is not None and out.weight.data_ptr() != emb.data_ptr():
            out.weight[ids] = out.weight[: min(n_old, min(ids))].float().mean(0).to(out.weight.dtype)
    info["tied"] = out is not None and out.weight.data_ptr() == emb.data_ptr()
    return ids, info
