"""Generation internals: the key/value-cache decode loop, sampling, checkpoint loading and scoring.

The public entry points are in `jaxlm.generate` (generate, generate_ids, Generator, load_run).
"""
