"""Interoperability with Hugging Face checkpoints (BERT incl. MiniLM, GPT-2, Llama).

    from jaxlm.interop import import_hf, apply_params, export_hf

- `import_hf(dir | "hf:DIR" | "hf:org/name")` -> (ModelConfig, params, TextTokenizer, info)
- `apply_params(model, params)` -> (fresh, unused): copy into a built model, report the rest
- `export_hf(cfg, params, out_dir, tokenizer=...)`: a folder transformers loads

Modules: hf_config (config.json <-> ModelConfig), hf_weights (tensor name maps and files),
hf (import/export), convert (`jaxlm convert` / `jaxlm export`: Hugging Face checkpoints as run
directories and back). Loading a model from a run directory or a Hugging Face folder alike is
`jaxlm.loading.load_model` / `load_params`; run directories themselves are `jaxlm.run.Run`.
"""
from jaxlm.interop.hf import export_hf, import_hf
from jaxlm.params import apply_params

__all__ = ["apply_params", "export_hf", "import_hf"]
