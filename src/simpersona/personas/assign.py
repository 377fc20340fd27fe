"""`simpersona personas assign`: a code per buyer at scale, per-shop mixes p̂_s(k), population sampling.

One streamed pass over FEAT_DIR/vectors.parquet and buyers.parquet (same row order, read in
lock-step batches of `batch_rows`; shop and buyer ids are checked to match) writes:

  assignments.parquet   shop_id, buyer_id, code (int16)
  shop_mix.parquet      shop_id, code, n, share          share = p̂_s(k) over all the shop's buyers
  code_strata.parquet   code, stratum, n, share          share = P(stratum | k) over all buyers
  code_means.parquet    code, n, <16 raw scalars>        x̄_k in raw units
  cards.json, cards.md  persona cards (personas/cards.py)
  meta.json, summary.json

Memory is bounded by the batch: the kernel (`Assigner`) preallocates its buffers once; counts and
sums are (shops × K) and (K × 16) arrays.
"""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch import nn

from simpersona.config import ConfigError, write_meta
from simpersona.contracts.labels import BUY_STRATA, STRATA
from simpersona.features.layout import SCALAR_NAMES
from simpersona.vqvae.checkpoint import load_model
from simpersona.vqvae.data import fixed_list_to_numpy
from simpersona.vqvae.model import VQVAE


@dataclass
class PersonasConfig:
    # VQ-VAE run folder (model.safetensors + config.json)
    model: Path | None = None
    # FEAT_DIR with vectors.parquet, buyers.parquet, buyer_sessions.parquet
    features: Path | None = None
    # rows per streamed Parquet batch; memory is bounded by this
    batch_rows: int = 65536
    # rows per encoder call inside a batch (small enough for the activations to stay in cache)
    kernel_rows: int = 4096
    # encoder precision: bf16 where the CPU has native bf16 (AVX512-BF16 / AMX), else fp32
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    # torch intra-op threads
    threads: int = 2
    # also write persona cards
    cards: bool = True
    # where the encoder runs: "duckdb" (this process, streamed), "pyspark" (personas/spark.py) or
    # "auto": the engine the features folder was made with (its summary.json)
    engine: Literal["auto", "duckdb", "pyspark"] = "auto"
    # items listed per code and field on a card (collections, brands, queries, products)
    cards_top_n: int = 5


def cpu_has_bf16() -> bool:
    """Native bf16 matmul on this CPU (AVX512-BF16 or AMX)?"""
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


class Assigner:
    """Encoder forward + nearest code with buffers preallocated for `chunk` rows.

    In bf16 the encoder's matmuls run in bf16 (weights cast once: what autocast would do each
    call); the last layer's output is copied back to fp32 so that the distances to the codebook
    (||e||² − 2 z·e, argmin) are computed in fp32, which keeps codes equal to fp32 on ≥ 99.5%.
    """

    def __init__(self, model: VQVAE, chunk: int, bf16: bool):
        dt = torch.bfloat16 if bf16 else torch.float32
        lins = [m for m in model.encoder if isinstance(m, nn.Linear)]
        self.bf16 = bf16
        self.w = [m.weight.detach().T.contiguous().to(dt) for m in lins]  # (in, out)
        self.b = [m.bias.detach().to(dt) for m in lins]  # (out,)
        self.h = [torch.empty(chunk, m.out_features, dtype=dt) for m in lins]  # (B, out)
        self.xin = torch.empty(chunk, lins[0].in_features, dtype=dt) if bf16 else None  # (B, 403)
        e = model.quantizer.codebook.detach().float()  # (K, D)
        self.e_t = (-2.0 * e).T.contiguous()  # (D, K)
        self.e_sq = (e * e).sum(1)  # (K,)
        self.z = torch.empty(chunk, e.shape[1])  # (B, D) fp32
        self.dist = torch.empty(chunk, e.shape[0])  # (B, K)
        self.codes = torch.empty(chunk, dtype=torch.long)  # (B,)

    @torch.inference_mode()
    def _chunk(self, x: torch.Tensor, out: np.ndarray) -> None:
        """Codes of x (n ≤ chunk rows) into out (n,)."""
        n = x.shape[0]
        h = self.xin[:n].copy_(x) if self.bf16 else x
        last = len(self.w) - 1
        for i, (w, b, buf) in enumerate(zip(self.w, self.b, self.h)):
            h = torch.addmm(b, h, w, out=buf[:n])
            if i < last:
                h.relu_()
        z = self.z[:n].copy_(h) if self.bf16 else h
        torch.addmm(self.e_sq, z, self.e_t, out=self.dist[:n])
        torch.argmin(self.dist[:n], 1, out=self.codes[:n])
        out[:] = self.codes[:n].numpy()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """x (n, 403) float32, any n → codes (n,) int64, computed `chunk` rows at a time."""
        with warnings.catch_warnings():  # Arrow-backed arrays are read-only; we only read them
            warnings.simplefilter("ignore", UserWarning)
            xt = torch.from_numpy(x)
        out = np.empty(x.shape[0], np.int64)
        step = self.codes.shape[0]
        for i in range(0, x.shape[0], step):
            self._chunk(xt[i : i + step], out[i : i + step])
        return out


def _stream(feat_dir: Path, batch_rows: int, buyer_cols: list[str]):
    """Lock-step batches of vectors.parquet and buyers.parquet: (ids table, x (n, 403), buyers batch)."""
    vec = pq.ParquetFile(feat_dir / "vectors.parquet").iter_batches(batch_size=batch_rows)
    buy = pq.ParquetFile(feat_dir / "buyers.parquet").iter_batches(
        batch_size=batch_rows, columns=["shop_id", "buyer_id", *buyer_cols]
    )
    for v, b in zip(vec, buy, strict=True):
        if not (v.column("buyer_id").equals(b.column("buyer_id")) and v.column("shop_id").equals(b.column("shop_id"))):
            raise ValueError(f"{feat_dir}: vectors.parquet and buyers.parquet rows are not aligned")
        yield v, fixed_list_to_numpy(v.column("x")), b


def engine(cfg: PersonasConfig) -> str:
    """The configured engine; "auto": the one FEAT_DIR/summary.json names (duckdb when it names none)."""
    if cfg.engine != "auto":
        return cfg.engine
    summary = Path(cfg.features) / "summary.json"
    return json.loads(summary.read_text()).get("engine", "duckdb") if summary.exists() else "duckdb"


def run(cfg: PersonasConfig, out_dir: Path) -> dict:
    if cfg.model is None or cfg.features is None:
        raise ConfigError("personas assign needs --model RUN_DIR and --features FEAT_DIR")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    feat = Path(cfg.features)
    torch.set_num_threads(cfg.threads)
    t0 = time.perf_counter()
    model, _ = load_model(cfg.model)
    k = model.cfg.codebook_size
    bf16 = cpu_has_bf16() if cfg.precision == "auto" else cfg.precision == "bf16"
    assigner = Assigner(model, cfg.kernel_rows, bf16)

    shop_index: dict[str, int] = {}
    shop_counts: list[np.ndarray] = []
    strata_counts = np.zeros((k, len(STRATA)), np.int64)
    raw_sums = np.zeros((k, len(SCALAR_NAMES)))
    schema = pa.schema([("shop_id", pa.string()), ("buyer_id", pa.string()), ("code", pa.int16())])
    n_rows = 0
    t_kernel = 0.0
    if engine(cfg) == "pyspark":
        from simpersona.personas import spark

        shop_index, shop_counts, strata_counts, raw_sums, n_rows, t_kernel = spark.assign(
            cfg, feat, assigner, k, out_dir / "assignments.parquet")
    else:
        with pq.ParquetWriter(out_dir / "assignments.parquet", schema) as writer:
            for ids, x, b in _stream(feat, cfg.batch_rows, ["stratum", *SCALAR_NAMES]):
                t = time.perf_counter()
                codes = assigner(x)
                t_kernel += time.perf_counter() - t
                writer.write_table(pa.table(
                    {"shop_id": ids.column("shop_id").cast(pa.string()), "buyer_id": ids.column("buyer_id").cast(pa.string()),
                     "code": pa.array(codes.astype(np.int16))}, schema=schema))
                shops, inv = np.unique(b.column("shop_id").to_numpy(zero_copy_only=False), return_inverse=True)
                for s in shops:
                    if s not in shop_index:
                        shop_index[s] = len(shop_index)
                        shop_counts.append(np.zeros(k, np.int64))
                counts = np.bincount(inv * k + codes, minlength=len(shops) * k).reshape(len(shops), k)
                for s, c in zip(shops, counts):
                    shop_counts[shop_index[s]] += c
                st = np.searchsorted(np.array(STRATA), b.column("stratum").to_numpy(zero_copy_only=False))
                strata_counts += np.bincount(codes * len(STRATA) + st, minlength=k * len(STRATA)).reshape(k, -1)
                raw = np.stack([b.column(c).to_numpy(zero_copy_only=False).astype(np.float64) for c in SCALAR_NAMES], 1)
                for j in range(raw.shape[1]):
                    raw_sums[:, j] += np.bincount(codes, weights=raw[:, j], minlength=k)
                n_rows += len(codes)

    # p̂_s(k), P(stratum | k), x̄_k
    shops = list(shop_index)
    sc = np.stack(shop_counts) if shops else np.zeros((0, k), np.int64)
    s_idx, c_idx = np.nonzero(sc)
    pq.write_table(pa.table({
        "shop_id": [shops[i] for i in s_idx], "code": c_idx.astype(np.int16), "n": sc[s_idx, c_idx],
        "share": sc[s_idx, c_idx] / sc.sum(1)[s_idx],
    }), out_dir / "shop_mix.parquet")
    size = strata_counts.sum(1)
    c_idx, st_idx = np.nonzero(strata_counts)
    pq.write_table(pa.table({
        "code": c_idx.astype(np.int16), "stratum": [STRATA[i] for i in st_idx], "n": strata_counts[c_idx, st_idx],
        "share": strata_counts[c_idx, st_idx] / size[c_idx],
    }), out_dir / "code_strata.parquet")
    means = raw_sums / np.maximum(size, 1)[:, None]
    pq.write_table(pa.table({"code": np.arange(k, dtype=np.int16), "n": size,
                             **{c: means[:, j] for j, c in enumerate(SCALAR_NAMES)}}), out_dir / "code_means.parquet")

    summary = {
        "rows": n_rows, "shops": len(shops), "codes_used": int((size > 0).sum()), "precision": "bf16" if bf16 else "fp32",
        "engine": engine(cfg),
        "kernel_rows_per_s": round(n_rows / t_kernel) if t_kernel else None,
        "wall_s": round(time.perf_counter() - t0, 2),
    }
    if cfg.cards:
        from simpersona.personas.cards import write_cards

        summary["cards"] = write_cards(model, out_dir, feat, cfg.cards_top_n)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    write_meta(out_dir, "personas", cfg, summary=summary)
    return summary


@dataclass
class Population:
    """Simulated buyers of one shop: persona codes k ~ p̂_s, strata drawn from P(stratum | k), intents."""

    codes: np.ndarray  # (n,) int, the persona ids
    strata: np.ndarray  # (n,) str
    intents: np.ndarray  # (n,) "buy" (A–C) or "browse" (D, E)


def _groups(t: pa.Table, key: str, item: str) -> dict:
    """{key value: (item values, shares)} from a long table with a `share` column."""
    keys = t.column(key).to_numpy(zero_copy_only=False)
    items = t.column(item).to_numpy(zero_copy_only=False)
    share = t.column("share").to_numpy()
    return {(int(k) if isinstance(k, np.integer) else k): (items[keys == k], share[keys == k]) for k in np.unique(keys)}


class PersonaMix:
    """Per-shop token distributions and per-token stratum profiles, loaded from a personas folder."""

    def __init__(self, personas_dir: Path):
        d = Path(personas_dir)
        self.mix = _groups(pq.read_table(d / "shop_mix.parquet"), "shop_id", "code")  # shop → (codes, p̂_s)
        self.strata = _groups(pq.read_table(d / "code_strata.parquet"), "code", "stratum")  # k → (strata, P(·|k))

    def sample_population(self, shop: str, n: int, rng: np.random.Generator) -> Population:
        """n simulated buyers of `shop`: k ~ p̂_s, stratum ~ P(stratum | k), intent from the stratum."""
        if shop not in self.mix:
            raise KeyError(f"shop {shop!r} has no persona mix; known: {sorted(self.mix)[:5]}…")
        codes, p = self.mix[shop]
        tokens = rng.choice(codes, size=n, p=p / p.sum())
        strata = np.empty(n, dtype=object)
        for c in np.unique(tokens):
            at = np.flatnonzero(tokens == c)
            names, q = self.strata[int(c)]
            strata[at] = rng.choice(names, size=len(at), p=q / q.sum())
        intents = np.where(np.isin(strata, BUY_STRATA), "buy", "browse")
        return Population(tokens.astype(np.int64), strata.astype(str), intents)
