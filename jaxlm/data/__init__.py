"""Data: text sources, tokenizers and grain input pipelines."""
