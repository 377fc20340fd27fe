"""Canonical clickstream events: the schema, readers for real formats, validation, ingestion."""
