"""Generation internals: the key/value-cache decode loop, sampling and scoring.

The public entry points are in `jaxlm.generate` (generate, generate_ids, Generator); a model to
generate with comes from `jaxlm.loading.load_model` (a run directory or a Hugging Face folder).
"""
