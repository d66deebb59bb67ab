"""Property-based fuzzing (Hypothesis) of what users type and what jaxlm reads: random YAML values
for random config keys give a valid Config or a ConfigError, and random bytes in a data file give
records or a DataError, never another exception (which the CLI would show as a traceback).
Bounded (a fixed number of examples, no deadline) so it runs in the default test run."""
import dataclasses
import typing

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jaxlm.config import Config, config_from_dict
from jaxlm.errors import ConfigError, DataError

FUZZ = settings(max_examples=60, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])


def _keys(cls: type, prefix: str = "") -> list[str]:
    """Every leaf key path of a config section ("train.steps", "data.tokenizer.kind", ...)."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            out += _keys(hints[f.name], f"{prefix}{f.name}.")
        else:
            out.append(prefix + f.name)
    return out


KEYS = _keys(Config)
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-2**70, 2**70),
    st.sampled_from([0, 1, -1, 2, 64, 2**32, 1e-3, 0.5, 1.0, -0.5, 1e308]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["", "3e-4", "1e3", "-1e3", ".5", "1e400", "nan", "gpt2", "bert", "causal",
                     "masked", "classification", "generative", "tensor", "fsdp", "auto", "{x}",
                     "{", "[1, 2", "text:x", "ü", "\x00"]),
    st.text(max_size=8))
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.one_of(st.text(max_size=5), st.integers()),
                                                 inner, max_size=3)), max_leaves=6)


def _nested(items: list[tuple[str, typing.Any]]) -> dict:
    raw: dict = {}
    for key, value in items:
        *parents, leaf = key.split(".")
        node = raw
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return raw


@FUZZ
@given(st.lists(st.tuples(st.sampled_from(KEYS), VALUES), min_size=1, max_size=4))
def test_random_yaml_values_give_a_config_or_a_config_error(tmp_path, items):
    raw = _nested(items)
    try:
        text = yaml.safe_dump(raw)
    except yaml.YAMLError:
        return  # not representable as YAML (e.g. a key YAML cannot write): nothing to read
    path = tmp_path / "c.yaml"
    path.write_text(text)
    from jaxlm.config import load_config
    try:
        cfg = load_config(path)
    except ConfigError as e:
        assert e.culprit, e  # the message names what is wrong
        return
    assert isinstance(cfg, Config)
    cfg.validate()  # a loaded config is valid as it stands (the Python path agrees)


@FUZZ
@given(st.lists(st.tuples(st.sampled_from(KEYS), st.one_of(
    st.sampled_from(["3e-4", "1e3", "-1", "0", "[1, 2]", "{a: 1}", "{embed: tensor}", "null",
                     ".inf", ".nan", "'x'", "[", "{", "true", "2.5", "1e400", ""]),
    st.text(max_size=10))), min_size=1, max_size=4))
def test_random_set_overrides_give_a_config_or_a_config_error(items):
    overrides = [f"{key}={value}" for key, value in items]
    try:
        cfg = config_from_dict({}, overrides)
    except ConfigError:
        return
    assert isinstance(cfg, Config)
    cfg.validate()


ATOMS = [b"", b" ", b"\t", b",", b"\n", b"\r\n", b'"', b"{", b"}", b"[", b"]", b":", b"0", b"1",
         b"-1", b"text", b"label", b"\xff", b"\xe9", b"null", b"true", b"1e999", b"\x00", b"#",
         b"\\", b"'", "\u00e9".encode(), b"NaN", b'{"text": "a", "label": 1}', b'{"label": [1]}',
         b'{"text": null}', b'{"text": "a", "label": {"x": 1}}', b"text\tlabel\n", b"text,label\n",
         b"\xef\xbb\xbf", b"1 a fine film\n", b"0 \n"]


@FUZZ
@given(kind=st.sampled_from(["jsonl", "tsv", "csv", "labeled", "text"]),
       on_invalid=st.sampled_from(["report", "error"]),
       documents=st.sampled_from(["file", "paragraph", "line"]),
       data=st.one_of(st.lists(st.sampled_from(ATOMS), max_size=12).map(b"".join),
                      st.binary(max_size=64)))
def test_random_bytes_in_data_files_give_records_or_a_data_error(tmp_path, kind, on_invalid,
                                                                 documents, data):
    from jaxlm.data.records import open_records
    from jaxlm.data.sources import SourceOptions, open_source, parse_spec

    path = tmp_path / f"train.{ {'labeled': 'txt', 'text': 'txt'}.get(kind, kind) }"
    path.write_bytes(data)
    opts = SourceOptions(on_invalid=on_invalid, documents=documents)
    readers = [open_source] + ([open_records] if kind != "text" else [])
    for read in readers:
        try:
            src = read(parse_spec(f"{kind}:{path}", opts), "train")
            rows = [src[i] for i in range(len(src))]
        except DataError as e:
            assert str(path) in str(e) or e.culprit, e
            continue
        assert all(isinstance(r, dict) for r in rows)


def test_the_fuzzed_keys_cover_every_section():
    sections = {k.split(".")[0] for k in KEYS if "." in k}
    assert sections >= {"model", "mesh", "optim", "data", "train", "finetune", "generative",
                        "distributed"}
    assert "data.tokenizer.kind" in KEYS


@pytest.fixture(autouse=True)
def _quiet_notices(capsys):
    """Deprecation notices and skipped-record reports go to stderr; the fuzz ignores them."""
    yield
    capsys.readouterr()


