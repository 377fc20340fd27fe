"""Stage `synth`: a realistic multi-shop synthetic clickstream with ground truth.

Modules: `catalog` (category vocabularies → shop catalogs and search queries), `buyers` (latent
buyer types and the vectorised session simulator), `generate` (SynthConfig, `run`, writers).
"""

from simpersona.synth.generate import SynthConfig, format_summary, run

__all__ = ["SynthConfig", "format_summary", "run"]
