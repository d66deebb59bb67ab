"""The workspace of the bad-input tests (tests/test_reliability_inputs.py, its catalogue, and
tests/test_reliability_runs.py): finished runs, Hugging Face folders and damaged inputs, built
once per test session by conftest.py's `w` fixture."""
import hashlib
import json
import os
from pathlib import Path

import pytest
import yaml

from cli_utils import run_cli as _run  # noqa: E402

TINY = {"model": {"family": "gpt2", "num_layers": 1, "d_model": 32, "num_heads": 2,
                  "max_len": 32},
        "data": {"seq_len": 32}, "mesh": {"num_devices": 1},
        "train": {"steps": 4, "batch_size": 4, "eval_every": 0, "log_every": 2,
                  "checkpoint_every": 4}}
CLF = {"model": {"family": "bert", "num_layers": 1, "d_model": 32, "num_heads": 2, "max_len": 64},
       "data": {"seq_len": 32, "tokenizer": {"kind": "wordpiece", "vocab_size": 300}},
       "mesh": {"num_devices": 1},
       "train": {"task": "classification", "steps": 4, "batch_size": 8, "eval_every": 4,
                 "log_every": 2, "checkpoint_every": 4}}
# folders no bad input may change (the rounds' additions below)
EXISTING = ("lm", "clf", "lm_badcfg", "hf_lm", "notrun", "hf_str", "hf_nan", "nan_run",
            "huge_run", "one", "tfds")


def _write(path: Path, data) -> Path:
    if isinstance(data, bytes):
        path.write_bytes(data)
    else:
        path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def build_workspace(w: Path, data_dir: Path) -> Path:
    """A workspace in the empty folder `w`: a finished LM run, a finished classifier run, an HF
    export, bad files (conftest.py's session fixture `w`)."""
    import shutil

    from jaxlm.config import config_from_dict
    from jaxlm.train.finetune import finetune
    from jaxlm.train.pretrain import pretrain

    corpus = _write(w / "corpus.txt", (data_dir / "tinyshakespeare/input.txt").read_text()[:40_000])
    sst = w / "sst"
    sst.mkdir()
    for name, n in (("train.txt", 200), ("dev.txt", 50), ("test.txt", 50)):
        lines = (data_dir / "sst2" / name).read_text().splitlines()[:n]
        _write(sst / name, "\n".join(lines) + "\n")
    lm = {**TINY, "data": {**TINY["data"], "train": f"text:{corpus}"}}
    _write(w / "tiny.yaml", lm)
    _write(w / "clf.yaml", {**CLF, "data": {**CLF["data"], "train": f"labeled:{sst}"}})
    pretrain(config_from_dict(lm), str(w / "lm"), show_progress=False)
    finetune(config_from_dict({**CLF, "data": {**CLF["data"], "train": f"labeled:{sst}"}}),
             str(w / "clf"), show_progress=False)
    assert _run(["export", "--run", str(w / "lm"), "--out", str(w / "hf_lm")])[0] == 0
    shutil.copytree(w / "lm", w / "lm_badcfg")
    _write(w / "lm_badcfg" / "config.yaml", "model: {d_model: [\n")  # a torn config.yaml
    (w / "notrun").mkdir()
    _write(w / "notrun" / "notes.txt", "not a run")
    _write(w / "badyaml.yaml", "model: [1, 2\n")
    _write(w / "list.yaml", "- model\n- train\n")
    _write(w / "evil.yaml", f'!!python/object/apply:os.system ["touch {w}/PWNED"]\n')
    _write(w / "latin1.txt", "caf\xe9 au lait\n".encode("latin-1"))
    _write(w / "badtok.json", "not json")
    hf = json.loads((w / "hf_lm" / "config.json").read_text())
    (w / "hf_automap").mkdir()
    _write(w / "hf_automap" / "config.json",
           json.dumps({**hf, "auto_map": {"AutoModelForCausalLM": "modeling_x.XForCausalLM"}}))
    _evil_pickle(w)
    _evil_tfds(w)
    _more_inputs(w)
    _round3_inputs(w)
    return w


def _evil_pickle(w: Path) -> None:
    """A pytorch_model.bin whose pickle would run a shell command when unpickled."""
    torch = pytest.importorskip("torch")

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {w}/PWNED",))

    (w / "hf_pickle").mkdir()
    _write(w / "hf_pickle" / "config.json", (w / "hf_lm" / "config.json").read_text())
    torch.save({"transformer.wte.weight": torch.zeros(2, 2), "x": Evil()},
               w / "hf_pickle" / "pytorch_model.bin")


def _evil_tfds(w: Path) -> None:
    """A prepared TFDS folder whose features.json names a module outside TFDS."""
    from jaxlm.data.tfds_build import build_dataset
    build_dataset("evil_ds", {"train": str(w / "sst" / "dev.txt")}, str(w / "tfds"))
    feats = next((w / "tfds" / "evil_ds").glob("*/features.json"))
    feats.write_text(feats.read_text().replace(
        "tensorflow_datasets.core.features.text_feature.Text", "evil_module.Text"))


def _tree_hash(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        h.update(str(p.relative_to(root)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


# --- round 2 (issue 18) inputs: typed Hugging Face configs, NaN and overflowing weights, a
# one-class training set, TFDS metadata naming foreign code ---

def _more_inputs(w: Path) -> None:
    """Hugging Face folders with a wrong config.json, NaN and overflowing weights (and runs
    converted from them), a one-class training set, TFDS metadata naming foreign code."""
    import shutil
    from unittest import mock

    import numpy as np
    from safetensors.numpy import load_file, save_file

    from jaxlm.interop.convert import convert_hf_to_run

    hf = json.loads((w / "hf_lm" / "config.json").read_text())
    for name, change in (("hf_str", {"n_embd": "32"}), ("hf_missing", {"n_layer": None}),
                         ("hf_list", {"n_head": [2]}), ("hf_zero", {"n_head": 0}),
                         ("hf_float", {"layer_norm_epsilon": "1e-5"}),
                         ("hf_labels", {"id2label": ["a", "b"]})):
        shutil.copytree(w / "hf_lm", w / name)
        bad = {k: v for k, v in {**hf, **change}.items() if v is not None}
        _write(w / name / "config.json", json.dumps(bad))
    for name, key, value in (("hf_nan", "transformer.h.0.mlp.c_fc.bias", np.nan),
                             ("hf_huge", "transformer.ln_f.weight", 3e38)):
        shutil.copytree(w / "hf_lm", w / name)
        tensors = load_file(w / name / "model.safetensors")
        tensors[key] = np.full_like(tensors[key], value)
        save_file(tensors, w / name / "model.safetensors", metadata={"format": "pt"})
    with mock.patch("jaxlm.interop.hf.require_finite"):  # a run whose training diverged
        convert_hf_to_run(w / "hf_nan", w / "nan_run")
    convert_hf_to_run(w / "hf_huge", w / "huge_run")  # finite weights, overflowing logits
    (w / "one").mkdir()
    lines = (w / "sst" / "train.txt").read_text().splitlines()
    _write(w / "one" / "train.txt", "\n".join(x for x in lines if x.startswith("1 ")) + "\n")
    _tfds_variants(w)


def _tfds_variants(w: Path) -> None:
    """Prepared TFDS folders whose metadata names a foreign class in ways a text match misses:
    a JSON-escaped key, a nested legacy {"type", "content"} feature, an unparseable file."""
    import shutil
    src = next((w / "tfds" / "evil_ds").glob("*/features.json")).parent
    text = src.joinpath("features.json").read_text().replace("evil_module.Text",
                                                              "tensorflow_datasets.core.features."
                                                              "text_feature.Text")
    variants = {
        "escaped_ds": text.replace('"pythonClassName": "tensorflow_datasets.core.features.text_'
                                   'feature.Text"',
                                   '"python\\u0043lassName": "evil_module.Text"'),
        "legacy_ds": json.dumps({"type": "tensorflow_datasets.core.features.features_dict."
                                 "FeaturesDict", "content": {"text": {"type": "evil_module.Text",
                                                                      "content": {}}}}),
        "torn_ds": text[:40]}
    for name, features in variants.items():
        dst = w / "tfds" / name / src.name
        shutil.copytree(src, dst)
        (dst / "features.json").write_text(features)
        info = json.loads((dst / "dataset_info.json").read_text())
        (dst / "dataset_info.json").write_text(json.dumps({**info, "name": name}))


# --- round 3 inputs: damaged model.json, malformed data files, damaged Hugging Face folders ---

SPECS = {  # run folder: model.json text, or a change to the LM run's model.json
    "spec_torn": '{"task": "causal", "model": {"d_mo', "spec_list": "[1, 2]",
    "spec_notask": lambda s: {k: v for k, v in s.items() if k != "task"},
    "spec_nomodel": lambda s: {k: v for k, v in s.items() if k != "model"},
    "spec_types": lambda s: {**s, "model": {**s["model"], "d_model": "32"}},
    "spec_unknown": lambda s: {**s, "model": {**s["model"], "colour": "red"}},
    "spec_task": lambda s: {**s, "task": "regression"}}


def _round3_inputs(w: Path) -> None:
    """Copies of the LM run with a damaged model.json, malformed data files, damaged Hugging
    Face folders."""
    import shutil
    spec = json.loads((w / "lm" / "model.json").read_text())
    for name, change in SPECS.items():
        shutil.copytree(w / "lm", w / name)
        _write(w / name / "model.json", change if isinstance(change, str)
               else json.dumps(change(spec)))
    _write(w / "bad.jsonl", '{"text": "fine", "label": "a"}\n{"text": "torn\n')
    _write(w / "list.jsonl", '["text", "label"]\n')
    _write(w / "nofield.csv", "sentence,label\nhello,1\n")
    _write(w / "empty.txt", "")
    _write(w / "blank.txt", "\n\n   \n")
    hf = (w / "hf_lm" / "config.json").read_text()
    for name, text in (("hf_torn", hf[:30]), ("hf_array", "[1, 2]"),
                       ("hf_type", json.dumps({**json.loads(hf), "model_type": "mamba"}))):
        shutil.copytree(w / "hf_lm", w / name)
        _write(w / name / "config.json", text)
    (w / "hf_noweights").mkdir()
    _write(w / "hf_noweights" / "config.json", hf)



EXISTING = EXISTING + tuple(SPECS) + ("hf_torn", "hf_noweights")
