"""Bad Hugging Face checkpoints are refused with errors naming the culprits; the other on-disk
layouts (sharded safetensors, pytorch_model.bin, bfloat16) import to the same numbers."""
from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from hf_utils import save_tiny, tiny_tokenizer  # noqa: E402
from safetensors.numpy import load_file, save_file  # noqa: E402

from jaxlm.config import ModelConfig  # noqa: E402
from jaxlm.errors import CheckpointError  # noqa: E402
from jaxlm.interop.hf import export_hf, import_hf  # noqa: E402
from jaxlm.params import to_flat  # noqa: E402
from jaxlm.models import build_model  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Tiny GPT-2 and Llama checkpoints (with a tokenizer), written once; tests copy them."""
    root = tmp_path_factory.mktemp("hf")
    tok = tiny_tokenizer(root / "tok")
    out = {}
    for kind in ("gpt2", "llama", "bert_cls"):
        d = root / kind
        shutil.copytree(root / "tok", d)
        out[kind] = (d, save_tiny(kind, d, vocab_size=tok.vocab_size))
    return out, tok


def _copy(tiny, kind, tmp_path):
    src, _ = tiny[0][kind]
    dst = tmp_path / kind
    shutil.copytree(src, dst)
    return dst


def _edit_tensors(d, fn):
    tensors = load_file(str(d / "model.safetensors"))
    fn(tensors)
    save_file(tensors, str(d / "model.safetensors"), metadata={"format": "pt"})


def _edit_config(d, **changes):
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(changes)
    (d / "config.json").write_text(json.dumps(cfg))


def test_missing_tensor_is_named(tiny, tmp_path):
    d = _copy(tiny, "gpt2", tmp_path)
    _edit_tensors(d, lambda t: t.pop("transformer.h.1.mlp.c_fc.weight"))
    with pytest.raises(CheckpointError, match=r"missing tensors of the backbone: h\.1\.mlp\.c_fc\.weight"):
        import_hf(d)


def test_incomplete_head_is_an_error(tiny, tmp_path):
    d = _copy(tiny, "bert_cls", tmp_path)
    _edit_tensors(d, lambda t: t.pop("classifier.bias"))
    with pytest.raises(CheckpointError, match=r"head\.classifier head \(incomplete\): classifier\.bias"):
        import_hf(d)


def test_shape_mismatch_lists_name_and_shapes(tiny, tmp_path):
    d = _copy(tiny, "llama", tmp_path)
    _edit_tensors(d, lambda t: t.update({"model.layers.0.self_attn.k_proj.weight":
                                         np.zeros((32, 32), np.float32)}))
    with pytest.raises(CheckpointError) as e:
        import_hf(d)
    assert "model.layers.0.self_attn.k_proj.weight is [32, 32], config.json implies [16, 32]" in str(e.value)


def test_config_that_contradicts_weights_is_refused(tiny, tmp_path):
    d = _copy(tiny, "gpt2", tmp_path)
    _edit_config(d, n_inner=100)
    with pytest.raises(CheckpointError, match=r"shape mismatches: transformer\.h\.0\.mlp\.c_fc\.weight"):
        import_hf(d)


def test_unknown_tensor_is_an_error(tiny, tmp_path):
    d = _copy(tiny, "gpt2", tmp_path)
    _edit_tensors(d, lambda t: t.update({"transformer.h.0.attn.adapter.weight":
                                         np.zeros((4, 4), np.float32)}))
    with pytest.raises(CheckpointError, match=r"unexpected names\): transformer\.h\.0\.attn\.adapter\.weight"):
        import_hf(d)


def test_unsupported_model_type(tiny, tmp_path):
    d = _copy(tiny, "gpt2", tmp_path)
    _edit_config(d, model_type="t5", architectures=["T5ForConditionalGeneration"])
    with pytest.raises(CheckpointError, match=r"model_type='t5'.*Supported model types: bert, gpt2, llama"):
        import_hf(d)


def test_unsupported_option_is_named(tiny, tmp_path):
    d = _copy(tiny, "llama", tmp_path)
    _edit_config(d, rope_parameters={"rope_type": "yarn", "rope_theta": 5e5, "factor": 8.0})
    with pytest.raises(CheckpointError, match=r"rope_type='yarn' \(supported: default, linear, llama3\)"):
        import_hf(d)


def test_hub_id_offline_fails_clearly(monkeypatch):
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    def offline(*a, **k):
        raise LocalEntryNotFoundError("Cannot find the requested files in the disk cache and "
                                      "outgoing traffic has been disabled.")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(CheckpointError) as e:
        import_hf("hf:sentence-transformers/all-MiniLM-L6-v2")
    msg = str(e.value)
    assert "hf:sentence-transformers/all-MiniLM-L6-v2" in msg and "offline" in msg
    assert "hf download sentence-transformers/all-MiniLM-L6-v2" in msg


def test_hub_id_without_huggingface_hub(monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # import fails
    with pytest.raises(CheckpointError, match="pip install huggingface_hub"):
        import_hf("hf:org/name")


def test_local_folder_problems(tmp_path, tiny):
    with pytest.raises(CheckpointError, match="does not exist"):
        import_hf(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no config.json"):
        import_hf(tmp_path / "empty")
    d = _copy(tiny, "gpt2", tmp_path)
    (d / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="holds no model weights"):
        import_hf(d)
    d = _copy(tiny, "llama", tmp_path)
    (d / "tokenizer.json").unlink()
    with pytest.raises(CheckpointError, match="has no tokenizer.json"):
        import_hf(d)


def test_pytorch_bin_without_torch_is_a_clear_error(tiny, tmp_path, monkeypatch):
    src, model = tiny[0]["gpt2"]
    d = tmp_path / "bin"
    shutil.copytree(src, d)
    (d / "model.safetensors").unlink()
    torch.save(model.state_dict(), d / "pytorch_model.bin")
    monkeypatch.setitem(sys.modules, "torch", None)  # as if torch were not installed
    with pytest.raises(CheckpointError, match=r"PyTorch pickle; reading it needs torch"):
        import_hf(d)


def test_package_imports_without_torch_or_transformers():
    code = ("import sys, jaxlm.interop, jaxlm.commands.convert, jaxlm.commands.export; "
            "print(sorted(m for m in ('torch', 'transformers', 'huggingface_hub') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stderr[-500:]


def _same_params(a, b):
    fa, fb = to_flat(a), to_flat(b)
    assert fa.keys() == fb.keys()
    return max(float(np.abs(fa[k] - fb[k]).max()) for k in fa)


def _save_bin(model, d, shards: int) -> None:
    """pytorch_model.bin (transformers 5 only writes safetensors), optionally sharded + index."""
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    names = sorted(sd)
    if shards == 1:
        torch.save(sd, d / "pytorch_model.bin")
        return
    weight_map = {}
    for i in range(shards):
        file = f"pytorch_model-{i + 1:05d}-of-{shards:05d}.bin"
        part = names[i::shards]
        torch.save({k: sd[k] for k in part}, d / file)
        weight_map.update({k: file for k in part})
    (d / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": weight_map}))


@pytest.mark.parametrize("layout", ["sharded", "pytorch_bin", "sharded_bin"])
def test_other_layouts_import_identically(layout, tiny, tmp_path):
    src, model = tiny[0]["llama"]
    d = tmp_path / layout
    shutil.copytree(src, d)
    (d / "model.safetensors").unlink()
    if layout == "sharded":
        model.save_pretrained(d, max_shard_size="20KB")
        assert (d / "model.safetensors.index.json").is_file()
    else:
        _save_bin(model, d, 1 if layout == "pytorch_bin" else 3)
    assert _same_params(import_hf(src)[1], import_hf(d)[1]) == 0.0


def test_bfloat16_checkpoint(tiny, tmp_path):
    src, model = tiny[0]["gpt2"]
    d = tmp_path / "bf16"
    shutil.copytree(src, d)
    copy.deepcopy(model).to(torch.bfloat16).save_pretrained(d)
    cfg, params, _, _ = import_hf(d)
    emb = to_flat(params)[("backbone", "embeddings", "token", "embedding")]
    ref = model.transformer.wte.weight.detach().to(torch.bfloat16).float().numpy()
    assert emb.dtype == np.float32 and np.array_equal(emb, ref)


def test_export_refuses_models_hf_cannot_represent(tmp_path, tiny):
    from flax import nnx

    tok = tiny[1]
    cases = [  # (model config, objective, build kwargs, expected message)
        (ModelConfig(family="gpt2", norm_position="post"), "causal", {},
         r"model\.norm_position='post' \(needs 'pre'\)"),
        (ModelConfig(family="bert"), "classification", {"num_labels": 2, "pooler": False},
         "always applies BERT's pooler"),
        (ModelConfig(family="gpt2"), "classification", {"num_labels": 2, "pooling": "last"},
         "no Hugging Face counterpart"),
    ]
    for cfg, objective, kw, message in cases:
        cfg = ModelConfig(**{**cfg.__dict__, "vocab_size": tok.vocab_size, "num_layers": 1,
                             "d_model": 16, "num_heads": 2, "max_len": 32})
        model = build_model(cfg, objective, **kw)
        with pytest.raises(CheckpointError, match=message):
            export_hf(cfg, nnx.state(model, nnx.Param), tmp_path / "out", tokenizer=tok)
    assert not (tmp_path / "out").exists()  # nothing half-written
