"""The run's one shop split, and the one session sampler: both keyed by stable ids.

Training shops feed every fitted thing: the VQ-VAE's §1.6 sample (features, vqvae), the traces,
the SFT records and the fast policy's counts. Evaluation shops feed the evaluations only (App. B's
held-out population, Tables 2–4 and 7–9). The split is made once, from the ingested shops, and
written to a file that every later stage reads (`ShopSplit.load`):

    SPLIT_DIR/shops.json   {"train": [...], "eval": [...], "config": {...}}

A shop is an evaluation shop when it is listed in `eval_shops`, or else when its stable hash
(`stable_rank(seed, shop_id)`) is among the lowest `eval_fraction` of the shops: the same shops on
every run and machine, whatever their names. A stage that fits on data calls
`ShopSplit.check_training(shops, stage)`, which fails naming the shop and the stage when an
evaluation shop's data reached it.

`sample_sessions` picks whole sessions so every persona code is represented (traces), ranking
sessions by a stable hash of their key (never by position, so a session's fate does not depend on
which other sessions exist); `validation_shops` picks the SFT validation shops among the
training shops the same way.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SPLIT_FILE = "shops.json"


class SplitLeakError(RuntimeError):
    """An evaluation shop's data reached a training input."""


@dataclass
class SplitConfig:
    # share of the shops held out for evaluation, picked by a stable hash of the shop id
    eval_fraction: float = 0.25
    # explicit evaluation shops (non-empty: used instead of eval_fraction)
    eval_shops: list[str] = field(default_factory=list)
    # salt of the shop-id hash (another seed draws another split)
    seed: int = 0
    # ingest folder whose events.parquet lists the shops (set by the main job)
    ingest: Path | None = None


def stable_rank(seed: int | str, key: str) -> int:
    """A 64-bit rank of `key` that depends only on (seed, key): the same on every run and machine.

    >>> stable_rank(0, "shop_01") == stable_rank(0, "shop_01") != stable_rank(1, "shop_01")
    True
    """
    return int.from_bytes(hashlib.blake2b(f"{seed}\x1f{key}".encode(), digest_size=8).digest(), "big")


@dataclass(frozen=True)
class ShopSplit:
    """Which shops train and which evaluate."""

    train: tuple[str, ...]
    eval: tuple[str, ...]

    def check_training(self, shops: Iterable[str], stage: str) -> None:
        """Raise SplitLeakError when any of `shops` (the shops of a training input) is an
        evaluation shop; the message names the shop(s) and `stage`."""
        leaked = sorted(set(shops) & set(self.eval))
        if leaked:
            raise SplitLeakError(f"{stage}: sessions of evaluation shop(s) {leaked[:5]}"
                                 f"{' …' if len(leaked) > 5 else ''} reached a training input; "
                                 "evaluation shops feed the evaluations only (see split/shops.json)")

    def training(self, shops: Iterable[str]) -> list[str]:
        """The training shops among `shops`, in order."""
        ev = set(self.eval)
        return [s for s in shops if s not in ev]

    def evaluation(self, shops: Iterable[str]) -> list[str]:
        """The evaluation shops among `shops`, in order."""
        ev = set(self.eval)
        return [s for s in shops if s in ev]

    def save(self, path: Path, config: dict[str, Any] | None = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        body = {"train": list(self.train), "eval": list(self.eval), "config": config or {}}
        path.write_text(json.dumps(body, indent=2) + "\n")

    @classmethod
    def load(cls, path: Path | str) -> "ShopSplit":
        """The split in `path` (shops.json, or the folder holding it)."""
        path = Path(path)
        if path.is_dir():
            path = path / SPLIT_FILE
        if not path.exists():
            raise FileNotFoundError(f"{path}: no shop split (the main job's split step writes it)")
        data = json.loads(path.read_text())
        missing = [k for k in ("train", "eval") if not isinstance(data.get(k), list)]
        if missing:
            raise ValueError(f"{path}: no list {missing}")
        both = set(data["train"]) & set(data["eval"])
        if both:
            raise ValueError(f"{path}: shop(s) {sorted(both)[:5]} are both training and evaluation shops")
        return cls(tuple(data["train"]), tuple(data["eval"]))


def load_split(path: Path | str | None) -> ShopSplit | None:
    """`ShopSplit.load(path)`, or None when no split is configured (a stage run on its own)."""
    return None if path is None else ShopSplit.load(path)


def make_split(shops: Iterable[str], cfg: SplitConfig) -> ShopSplit:
    """The split of `shops`: `cfg.eval_shops` when given (each must be one of `shops`), else the
    round(eval_fraction × n) shops of lowest stable rank (at least one, and at least one training
    shop, when there are two or more shops and eval_fraction > 0)."""
    shops = sorted(set(shops))
    if cfg.eval_shops:
        unknown = sorted(set(cfg.eval_shops) - set(shops))
        if unknown:
            raise ValueError(f"split.eval_shops {unknown} are not shops of the data ({len(shops)} shops)")
        ev = set(cfg.eval_shops)
    else:
        if not 0 <= cfg.eval_fraction < 1:
            raise ValueError(f"split.eval_fraction must be in [0, 1), got {cfg.eval_fraction}")
        n = min(len(shops) - 1, max(1, round(cfg.eval_fraction * len(shops)))) if cfg.eval_fraction > 0 and len(shops) > 1 else 0
        ev = set(sorted(shops, key=lambda s: stable_rank(cfg.seed, s))[:n])
    if len(ev) == len(shops):
        raise ValueError("split: every shop is an evaluation shop; nothing is left to train on")
    return ShopSplit(tuple(s for s in shops if s not in ev), tuple(s for s in shops if s in ev))


def run(cfg: SplitConfig, run_dir: Path) -> dict[str, Any]:
    """The main job's split step: the shops of INGEST_DIR/events.parquet → RUN_DIR/shops.json."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from simpersona.config import ConfigError, to_dict, write_meta

    if cfg.ingest is None:
        raise ConfigError("split needs ingest (the folder holding events.parquet)")
    events = Path(cfg.ingest) / "events.parquet"
    if not events.exists():
        raise FileNotFoundError(f"{events} does not exist (split.ingest must be the ingest folder)")
    shops = pc.unique(pq.read_table(events, columns=["shop_id"]).column("shop_id")).to_pylist()
    split = make_split([s for s in shops if s is not None], cfg)
    run_dir = Path(run_dir)
    split.save(run_dir / SPLIT_FILE, {k: v for k, v in to_dict(cfg).items() if k != "ingest"})
    summary = {"train_shops": len(split.train), "eval_shops": len(split.eval), "eval": list(split.eval)}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    write_meta(run_dir, "split", cfg, summary=summary)
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    return f"split: {summary['train_shops']} training shops, {summary['eval_shops']} evaluation shops {summary['eval']}"


# -- sessions --------------------------------------------------------------------------------------
def sample_sessions(
    records: list[dict[str, Any]], max_per_code: int, min_per_code: int, target_sessions: int, seed: int
) -> list[dict[str, Any]]:
    """Keep whole sessions so that every persona code is represented and the corpus stays small.

    `records`: dicts with `session_key`, `persona`, `shop_id`, `stratum` (several per session
    allowed: a session's records stay together). Each code first gets min(available,
    `min_per_code`) sessions; the rest of the `target_sessions` budget (0 = no budget) goes
    round-robin over codes, never past `max_per_code` per code. Within a code, sessions are drawn
    round-robin over its (shop, stratum) groups, so no shop or stratum dominates a code; groups and
    sessions are ordered by `stable_rank(seed, id)`.
    """
    by_session: dict[str, dict] = {}
    for r in records:
        by_session.setdefault(r["session_key"], r)
    by_code: dict[int, dict[tuple, list[str]]] = defaultdict(lambda: defaultdict(list))
    for key, r in by_session.items():
        by_code[r["persona"]][(r["shop_id"], r["stratum"])].append(key)
    queues: dict[int, list[str]] = {}
    for code in sorted(by_code):
        groups = by_code[code]
        for g in groups.values():
            g.sort(key=lambda k: (stable_rank(seed, k), k))
        order = sorted(groups, key=lambda g: (stable_rank(seed, f"{code}\x1f{g[0]}\x1f{g[1]}"), g))
        queue, depth = [], 0
        while len(queue) < sum(map(len, groups.values())):
            queue += [groups[g][depth] for g in order if depth < len(groups[g])]
            depth += 1
        queues[code] = queue[:max_per_code] if max_per_code > 0 else queue
    take = {c: min(len(q), min_per_code) for c, q in queues.items()}
    budget = (target_sessions - sum(take.values())) if target_sessions > 0 else sum(map(len, queues.values()))
    while budget > 0 and any(take[c] < len(q) for c, q in queues.items()):
        for c, q in queues.items():
            if budget > 0 and take[c] < len(q):
                take[c] += 1
                budget -= 1
    kept = {key for c, q in queues.items() for key in q[: take[c]]}
    return [r for r in records if r["session_key"] in kept]


def validation_shops(shops: Iterable[str], val_fraction: float, seed: int) -> set[str]:
    """The SFT validation shops among (training) `shops`: the round(val_fraction × n) of lowest
    stable rank, at least one when there are two or more shops and val_fraction > 0, never all."""
    shops = sorted(set(shops))
    n = min(len(shops) - 1, max(1, round(val_fraction * len(shops)))) if val_fraction > 0 and len(shops) > 1 else 0
    return set(sorted(shops, key=lambda s: (stable_rank(f"val{seed}", s), s))[:n])
