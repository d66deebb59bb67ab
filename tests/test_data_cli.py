"""`jaxlm train-tokenizer` and `jaxlm data show`: real runs and a clear error."""
import pytest

from jaxlm.cli import main
from jaxlm.data.tokenizer import TextTokenizer


@pytest.mark.parametrize("kind,vocab", [("char", 0), ("bpe", 400), ("wordpiece", 800),
                                        ("unigram", 500)])
def test_train_tokenizer_cli_every_kind(kind, vocab, tmp_path, data_dir, capsys):
    out = tmp_path / kind
    rc = main(["train-tokenizer", "--data", f"labeled:{data_dir}/sst2:validation", "--kind", kind,
               "--vocab-size", str(vocab), "--out", str(out), "--quiet"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert f"saved {out / 'tokenizer.json'}: {kind}" in printed and "872 texts" in printed
    tok = TextTokenizer.load(out)
    if vocab:
        assert tok.vocab_size <= vocab and tok.vocab_size > 100
    assert None not in (tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id, tok.mask_id)
    text = "one long string of cliches ."
    decoded = tok.decode(tok.encode(text))
    assert decoded.replace(" ", "") == text.replace(" ", "")


def test_data_show_reports_sizes_labels_and_decodes(data_dir, tmp_path, capsys):
    assert main(["train-tokenizer", "--data", f"labeled:{data_dir}/sst2", "--kind", "wordpiece",
                 "--vocab-size", "2000", "--out", str(tmp_path), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["data", "show", f"labeled:{data_dir}/trec", "--encoding", "iso-8859-1",
                 "--n", "2", "--tokenizer", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "splits: train 5,452 · test 500" in out
    assert "labels (6, counts in train): 0 (1,162), 1 (1,250), 2 (86), 3 (1,223)" in out
    assert "[0] label 0: 'How did serfdom develop in and then leave Russia ?'" in out
    assert "tokens [" in out and "-> 'how did" in out


def test_data_show_encoding_error_is_one_paragraph(data_dir, capsys):
    assert main(["data", "show", f"labeled:{data_dir}/trec"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("jaxlm data: error: The data file") and "Traceback" not in err
    assert "line 66" in err and "--encoding" in err
