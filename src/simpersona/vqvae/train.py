"""`simpersona vqvae train`: fit the VQ-VAE on the §1.6 sample (features' split train/val).

Deterministic given the seed: weights from torch's global RNG seeded once, the data order of
epoch e from numpy's generator seeded by (seed, e), k-means++ seeding and dead-code resets from a
dedicated torch.Generator. A checkpoint (weights, Adam moments, both RNG states, early-stopping
state) is written every `checkpoint_every` steps and at every validation; re-running the same
command after a kill resumes from it and ends with the same weights as an uninterrupted run.
Training runs with torch's deterministic algorithms on (free on CPU) and `threads` intra-op
threads: the same seed and thread count give bit-identical weights run to run; another thread
count or CPU may change the last bits (the reduction order of the matmuls).
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from simpersona.config import ConfigError, to_dict, write_meta
from simpersona.vqvae.checkpoint import load_training_state, save_model, save_training_state
from simpersona.vqvae.data import Sample, load_sample
from simpersona.vqvae.losses import LossConfig, aux_class_weights, compute_losses
from simpersona.vqvae.model import HEADS, ModelConfig, VQVAE


@dataclass
class TrainConfig:
    # features folder (FEAT_DIR) holding buyers.parquet, vectors.parquet, transforms.json
    features: Path | None = None
    # the run's shop split (split/shops.json): a train/val buyer of an evaluation shop is an error (None: not checked)
    split: Path | None = None
    # architecture and quantizer settings
    model: ModelConfig = field(default_factory=ModelConfig)
    # loss weights and positive-miner settings
    loss: LossConfig = field(default_factory=LossConfig)
    # seed for weights, data order, dropout, k-means++ and dead-code resets
    seed: int = 0
    # buyers per optimisation step (also the InfoNCE batch)
    batch_size: int = 512
    # Adam learning rate
    lr: float = 1e-3
    # upper bound on epochs (early stopping usually ends sooner)
    max_epochs: int = 40
    # stop after this many optimisation steps in total (0: no limit)
    max_steps: int = 0
    # validate every this many steps (0: once per epoch)
    eval_every: int = 0
    # stop after this many validations without an improvement of min_delta
    patience: int = 5
    # improvement of the validation loss that counts
    min_delta: float = 1e-4
    # also checkpoint every this many steps (validations always checkpoint)
    checkpoint_every: int = 50
    # resume from RUN_DIR/checkpoint when one is there
    resume: bool = True
    # torch intra-op threads
    threads: int = 2
    # show a progress bar
    progress: bool = True


def _batches(n: int, batch_size: int, seed: int, step: int) -> np.ndarray:
    """Row indices of the batch used at 0-based `step` (a fresh permutation each epoch)."""
    per_epoch = math.ceil(n / batch_size)
    epoch, offset = divmod(step, per_epoch)
    perm = np.random.default_rng([seed, epoch]).permutation(n)
    return perm[offset * batch_size : (offset + 1) * batch_size]


def _tensors(s: Sample, rows: np.ndarray | slice) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return torch.from_numpy(s.x[rows]), torch.from_numpy(s.signature[rows]), torch.from_numpy(s.labels[rows])


@torch.no_grad()
def _encode_all(model: VQVAE, x: np.ndarray, batch: int = 8192) -> torch.Tensor:
    model.eval()
    return torch.cat([model.encoder(torch.from_numpy(x[i : i + batch])) for i in range(0, len(x), batch)])


@torch.no_grad()
def validate(model: VQVAE, s: Sample, class_weights: torch.Tensor, cfg: TrainConfig) -> dict[str, float]:
    """Mean loss parts over fixed-order validation batches, eval mode (no dropout, no EMA)."""
    model.eval()
    sums: dict[str, float] = {}
    n = len(s.x)
    for i in range(0, n, cfg.batch_size):
        x, sig, lab = _tensors(s, slice(i, i + cfg.batch_size))
        parts = compute_losses(model(x), x, sig, lab, class_weights, cfg.loss).as_floats()
        for k, v in parts.items():
            sums[k] = sums.get(k, 0.0) + v * len(x) / n
    return sums


def usage_stats(codes: torch.Tensor, usage: torch.Tensor, k: int, alpha: float) -> dict[str, float]:
    """Batch codebook usage %, perplexity exp(H) of the batch code distribution, live-code %."""
    p = torch.bincount(codes, minlength=k).double() / codes.numel()
    nz = p[p > 0]
    return {
        "usage_pct": 100.0 * float((p > 0).sum()) / k,
        "perplexity": float(torch.exp(-(nz * nz.log()).sum())),
        "live_pct": 100.0 * float((usage >= alpha * usage.mean()).sum()) / k,
    }


# fields that must match for a checkpoint to be resumed (the others: data path, limits, logging, threads)
RESUME_KEYS: tuple[str, ...] = ("model", "loss", "seed", "batch_size", "lr")


def _check_same_run(cfg: TrainConfig, saved: Path) -> None:
    old = json.loads(saved.read_text()) if saved.exists() else {}
    new = to_dict(cfg)
    diff = [k for k in RESUME_KEYS if old.get(k) != new[k]]
    if diff:
        raise ConfigError(f"{saved.parent} holds a checkpoint trained with other {diff}; "
                          "use another --out, or --set resume=false to start over")


def check_sample_shops(feat_dir: Path, split_path: Path | None) -> None:
    """Fail (naming the shop) when a train/val buyer of FEAT_DIR belongs to an evaluation shop."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from simpersona.contracts.split import load_split

    split = load_split(split_path)
    if split is not None:
        b = pq.read_table(Path(feat_dir) / "buyers.parquet", columns=["shop_id", "split"])
        sampled = pc.is_in(b["split"], pa.array(["train", "val"]))
        split.check_training(pc.unique(b.filter(sampled)["shop_id"]).to_pylist(), f"vqvae ({feat_dir} train/val buyers)")


@contextlib.contextmanager
def deterministic_torch():
    """torch's deterministic algorithms on (an op without one raises), the old setting restored after."""
    was = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(was)


def run(cfg: TrainConfig, run_dir: Path) -> dict:
    """Train (or resume) into run_dir; returns the summary written to run_dir/summary.json."""
    with deterministic_torch():
        return _train(cfg, run_dir)


def _train(cfg: TrainConfig, run_dir: Path) -> dict:
    if cfg.features is None:
        raise ConfigError("vqvae train needs --features FEAT_DIR")
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt_dir = run_dir / "checkpoint"
    torch.set_num_threads(cfg.threads)
    t0 = time.perf_counter()
    check_sample_shops(cfg.features, cfg.split)
    data = load_sample(cfg.features)
    train, val = data["train"], data["val"]
    class_weights = torch.stack(
        [aux_class_weights(torch.from_numpy(train.labels[:, i]), cfg.model.n_classes) for i in range(len(HEADS))]
    )  # (3 heads, 3 classes)

    torch.manual_seed(cfg.seed)
    model = VQVAE(cfg.model)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    state = {"step": 0, "best_val": math.inf, "best_step": 0, "bad_evals": 0, "stopped": False}
    resumed = cfg.resume and (ckpt_dir / "state.json").exists()
    if resumed:
        _check_same_run(cfg, run_dir / "config.json")
        best, state = load_training_state(ckpt_dir, model, opt, gen)
    else:
        model.quantizer.init_kmeans_pp(_encode_all(model, train.x), gen, cfg.batch_size)
        best = {k: v.clone() for k, v in model.state_dict().items()}
    (run_dir / "config.json").write_text(json.dumps(to_dict(cfg), indent=2) + "\n")
    src_tf = Path(cfg.features) / "transforms.json"
    if src_tf.exists():
        shutil.copyfile(src_tf, run_dir / "transforms.json")

    log_path = run_dir / "train_log.jsonl"
    old = log_path.read_text().splitlines() if (resumed and log_path.exists()) else []
    kept = [ln for ln in old if json.loads(ln).get("step", 0) <= state["step"]]
    log_path.write_text("".join(ln + "\n" for ln in kept))

    n = len(train.x)
    per_epoch = math.ceil(n / cfg.batch_size)
    eval_every = cfg.eval_every or per_epoch
    limit = per_epoch * cfg.max_epochs
    if cfg.max_steps:
        limit = min(limit, cfg.max_steps)
    k = cfg.model.codebook_size
    bar = None
    if cfg.progress:
        from tqdm import tqdm

        bar = tqdm(total=limit, initial=state["step"], desc="vqvae", unit="step")
    with log_path.open("a") as log:
        while state["step"] < limit and not state["stopped"]:
            step = state["step"]
            x, sig, lab = _tensors(train, _batches(n, cfg.batch_size, cfg.seed, step))
            model.train()
            out = model(x)
            parts = compute_losses(out, x, sig, lab, class_weights, cfg.loss)
            opt.zero_grad(set_to_none=True)
            parts.total.backward()
            opt.step()
            model.quantizer.ema_update(out.z_e.detach(), out.codes)
            step += 1
            n_reset = 0
            if model.quantizer.due_for_reset(step):
                n_reset = model.quantizer.reset_dead(out.z_e.detach(), out.codes, gen)
            state["step"] = step
            rec = {"step": step, "epoch": (step - 1) // per_epoch, **parts.as_floats()}
            rec |= usage_stats(out.codes, model.quantizer.usage, k, cfg.model.dead_alpha)
            rec["dead_reset"] = n_reset
            if step % eval_every == 0 or step == limit:
                v = validate(model, val, class_weights, cfg) if len(val.x) else parts.as_floats()
                rec["val"] = v
                if v["total"] < state["best_val"] - cfg.min_delta:
                    state |= {"best_val": v["total"], "best_step": step, "bad_evals": 0}
                    best = {kk: vv.clone() for kk, vv in model.state_dict().items()}
                else:
                    state["bad_evals"] += 1
                    state["stopped"] = state["bad_evals"] >= cfg.patience
            log.write(json.dumps(rec) + "\n")
            log.flush()
            if "val" in rec or step % cfg.checkpoint_every == 0 or state["stopped"] or step == limit:
                save_training_state(ckpt_dir, model, best, opt, gen, state)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{rec['total']:.3f}", use=f"{rec['usage_pct']:.0f}%", ppl=f"{rec['perplexity']:.0f}")
    if bar is not None:
        bar.close()

    save_model(run_dir, best)
    model.load_state_dict(best)
    model.eval()  # a resumed run never validated: its model is still in train mode (dropout)
    val_codes = model.encode_codes(torch.from_numpy(val.x)) if len(val.x) else torch.zeros(0, dtype=torch.long)
    summary = {
        "steps": state["step"],
        "best_step": state["best_step"],
        "best_val_loss": state["best_val"],
        "early_stopped": state["stopped"],
        "resumed": resumed,
        "n_train": n,
        "n_val": len(val.x),
        "val_codes_used": int(torch.unique(val_codes).numel()),
        "wall_s": round(time.perf_counter() - t0, 2),
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    write_meta(run_dir, "vqvae", cfg, summary=summary)
    return summary
