"""Simulated A/B tests of storefront changes: variant spec, paired persona populations, effects with
intervals (`stage.run`, the `simpersona abtest` command)."""
