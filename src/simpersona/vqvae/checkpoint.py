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

from simpersona.config import InputError, load_config
from simpersona.vqvae.model import ModelConfig, VQVAE


def _load_tensors(path: Path, what: str) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors; a missing, truncated or corrupt file is an InputError naming it."""
    if not path.exists():
        raise InputError(f"{path}: no {what} here")
    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises its own SafetensorError (or OSError) on a bad file
        raise InputError(f"{path}: truncated or corrupt {what} ({type(e).__name__}: {str(e).splitlines()[0]})") from None


def _load_json(path: Path, what: str) -> dict:
    try:
        out = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{path}: no {what} here") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: corrupt {what} (not JSON: {e})") from None
    if not isinstance(out, dict):
        raise InputError(f"{path}: corrupt {what} (not a JSON object)")
    return out


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
    """Restore what `save_training_state` wrote; returns (best weights, state). A truncated or
    corrupt checkpoint is an InputError naming the file (delete the checkpoint folder, or
    `--set resume=false`, to start over)."""
    hint = f"; delete {ckpt_dir} (or --set resume=false) to train from the start"
    try:
        state = _load_json(ckpt_dir / "state.json", "VQ-VAE training state")
        missing = {"step", "best_val", "best_step", "bad_evals", "stopped"} - set(state)
        if missing:
            raise InputError(f"{ckpt_dir / 'state.json'}: corrupt VQ-VAE training state (missing {sorted(missing)})")
        t = _load_tensors(ckpt_dir / "last.safetensors", "VQ-VAE checkpoint")
        try:
            _restore(t, model, opt, gen)
        except (RuntimeError, KeyError, ValueError) as e:
            raise InputError(f"{ckpt_dir / 'last.safetensors'}: checkpoint does not fit this model "
                             f"({str(e).splitlines()[0]})") from None
    except InputError as e:
        raise InputError(f"{e}{hint}") from None
    return {k[5:]: v for k, v in t.items() if k.startswith("best.")}, state


def _restore(t: dict[str, torch.Tensor], model: VQVAE, opt: torch.optim.Optimizer, gen: torch.Generator) -> None:
    model.load_state_dict({k[6:]: v for k, v in t.items() if k.startswith("model.")})
    sd = opt.state_dict()
    sd["state"] = {}
    for k, v in t.items():
        if k.startswith("opt."):
            _, i, name = k.split(".", 2)
            sd["state"].setdefault(int(i), {})[name] = v
    opt.load_state_dict(sd)
    torch.set_rng_state(t["rng.torch"])
    gen.set_state(t["rng.gen"])


def save_model(run_dir: Path, weights: dict[str, torch.Tensor]) -> None:
    _atomic_save(weights, Path(run_dir) / "model.safetensors")


def load_model(run_dir: Path):
    """(model in eval mode, its ModelConfig) from RUN_DIR/model.safetensors + config.json's `model` section."""
    run_dir = Path(run_dir)
    cfg = load_config(ModelConfig, values=_load_json(run_dir / "config.json", "VQ-VAE config").get("model") or {})
    model = VQVAE(cfg)
    path = run_dir / "model.safetensors"
    try:
        model.load_state_dict(_load_tensors(path, "VQ-VAE model"))
    except RuntimeError as e:
        raise InputError(f"{path}: weights do not fit {run_dir / 'config.json'} ({str(e).splitlines()[0]})") from None
    return model.eval(), cfg
