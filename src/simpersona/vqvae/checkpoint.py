"""Checkpoints: safetensors for every tensor (weights, Adam moments, RNG states), JSON for the rest.

RUN_DIR/
  model.safetensors      the published model (best validation weights): encoder, codebook, heads
  config.json            the resolved training config (model + loss + optimisation)
  transforms.json        copy of the fitted feature transforms (FEAT_DIR/transforms.json)
  checkpoint/last.safetensors + checkpoint/state.json   everything needed to resume exactly
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from simpersona.config import load_config
from simpersona.vqvae.model import VQVAE


def _atomic_save(tensors: dict[str, torch.Tensor], path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    save_file({k: v.detach().contiguous().clone() for k, v in tensors.items()}, str(tmp))
    os.replace(tmp, path)


def _atomic_json(obj: dict, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


def save_training_state(
    ckpt_dir: Path, model: VQVAE, best: dict[str, torch.Tensor], opt: torch.optim.Optimizer,
    gen: torch.Generator, state: dict,
) -> None:
    """Write model, best weights, Adam moments, torch's global RNG and `gen`, then `state` (last)."""
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors |= {f"best.{k}": v for k, v in best.items()}
    for i, st in opt.state_dict()["state"].items():
        tensors |= {f"opt.{i}.{k}": torch.as_tensor(v) for k, v in st.items()}
    tensors["rng.torch"] = torch.get_rng_state()
    tensors["rng.gen"] = gen.get_state()
    _atomic_save(tensors, ckpt_dir / "last.safetensors")
    _atomic_json(state, ckpt_dir / "state.json")


def load_training_state(
    ckpt_dir: Path, model: VQVAE, opt: torch.optim.Optimizer, gen: torch.Generator
) -> tuple[dict[str, torch.Tensor], dict]:
    """Restore what `save_training_state` wrote; returns (best weights, state)."""
    t = load_file(str(ckpt_dir / "last.safetensors"))
    model.load_state_dict({k[6:]: v for k, v in t.items() if k.startswith("model.")})
    best = {k[5:]: v for k, v in t.items() if k.startswith("best.")}
    sd = opt.state_dict()
    sd["state"] = {}
    for k, v in t.items():
        if k.startswith("opt."):
            _, i, name = k.split(".", 2)
            sd["state"].setdefault(int(i), {})[name] = v
    opt.load_state_dict(sd)
    torch.set_rng_state(t["rng.torch"])
    gen.set_state(t["rng.gen"])
    return best, json.loads((ckpt_dir / "state.json").read_text())


def save_model(run_dir: Path, weights: dict[str, torch.Tensor]) -> None:
    _atomic_save(weights, Path(run_dir) / "model.safetensors")


def load_model(run_dir: Path):
    """(model in eval mode, TrainConfig) from RUN_DIR/model.safetensors + config.json."""
    from simpersona.vqvae.train import TrainConfig

    run_dir = Path(run_dir)
    cfg = load_config(TrainConfig, values=json.loads((run_dir / "config.json").read_text()))
    model = VQVAE(cfg.model)
    model.load_state_dict(load_file(str(run_dir / "model.safetensors")))
    return model.eval(), cfg
