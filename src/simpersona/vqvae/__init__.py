"""Behaviour-aware VQ-VAE (spec §2): model, losses, training, checkpoints.

`model.py` (architecture + EMA quantizer), `losses.py` (named loss parts, positive miner),
`train.py` (`run(config, run_dir)`, `simpersona vqvae train`), `checkpoint.py` (safetensors I/O).
"""
