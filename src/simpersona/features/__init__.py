"""Buyer features stage: enrichment, 16 scalars, strata, labels, product channels, 403-d vectors."""
