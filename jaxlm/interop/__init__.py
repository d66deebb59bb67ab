"""Interoperability with Hugging Face checkpoints (BERT incl. MiniLM, GPT-2, Llama).

    from jaxlm.interop import import_hf, load_params, apply_params, export_hf

- `import_hf(dir | "hf:DIR" | "hf:org/name")` -> (ModelConfig, params, TextTokenizer, info)
- `load_params(run_dir | hf dir | "hf:...")`: the same for jaxlm run directories too
- `apply_params(model, params)` -> (fresh, unused): copy into a built model, report the rest
- `export_hf(cfg, params, out_dir, tokenizer=...)`: a folder transformers loads

Modules: hf_config (config.json <-> ModelConfig), hf_weights (tensor name maps and files),
params (State helpers), hf (import/export), run_io (run directories, convert/export commands).
"""
from jaxlm.interop.hf import export_hf, import_hf
from jaxlm.interop.params import apply_params
from jaxlm.interop.run_io import load_params

__all__ = ["apply_params", "export_hf", "import_hf", "load_params"]
