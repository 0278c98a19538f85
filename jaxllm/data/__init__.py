"""Data engineering: corpus fetch, tokenizers, cleaning and dedup, shards, the grain pipeline."""
