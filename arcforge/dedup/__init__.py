"""Deduplication: exact (this release), MinHash-LSH and semantic (later issues)."""
