"""The bad-input catalogue: each wrong input to each command is a clear one-paragraph error that
names the culprit, exits with code 2, prints no traceback, and leaves every existing run directory
byte for byte unchanged. (tests/test_cli.py covers nine more pretrain cases.)"""
import pytest

from cli_utils import run_cli as _run  # noqa: E402
from reliability_workspace import EXISTING, _tree_hash

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
