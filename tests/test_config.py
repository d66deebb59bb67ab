"""Config validation: YAML/--set configs and configs built in Python take one path."""
from __future__ import annotations

import pytest

from jaxlm.config import Config, config_from_dict, migrate_raw
from jaxlm.errors import ConfigError


def test_train_objective_is_a_deprecated_alias_of_task(capsys):
    assert config_from_dict({"train": {"objective": "masked"}}).train.task == "masked"
    assert config_from_dict({}, ["train.objective=classification"]).train.task == "classification"
    assert "'train.objective' is deprecated; use 'train.task'" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="disagree"):
        config_from_dict({"train": {"objective": "masked", "task": "causal"}})
    with pytest.raises(ConfigError, match="Did you mean 'masked'"):
        config_from_dict({"train": {"task": "mased"}})
    # an old run's saved config compares equal to a new one after migration
    assert migrate_raw({"train": {"objective": "masked", "steps": 3}}) == {
        "train": {"steps": 3, "task": "masked"}}
    cfg = Config()
    cfg.train.objective = "masked"  # old attribute still reads and writes the task
    assert cfg.train.task == "masked" and cfg.train.objective == "masked"


@pytest.mark.parametrize("kw,message", [
    (dict(attention_impl="splsh"), "model.attention_impl' is 'splsh'.*Did you mean 'splash'"),
    (dict(num_heads=3, d_model=32), "3 must divide model.d_model=32"),
    (dict(num_heads=4, num_kv_heads=3), "3 must divide model.num_heads=4"),
    (dict(dtype="bf16"), "model.dtype' is 'bf16'.*Did you mean 'bfloat16'"),
    (dict(family="gtp2"), "Did you mean 'gpt2'"),
    (dict(num_layers=0), "model.num_layers': must be positive"),
    (dict(d_model="128"), "model.d_model' must be of type int"),
])
def test_model_config_built_in_python_is_validated_like_yaml(kw, message):
    from jaxlm.config import ModelConfig
    from jaxlm.models import build_model
    for check in (lambda: ModelConfig(vocab_size=16, **kw).resolved(),
                  lambda: build_model(ModelConfig(vocab_size=16, **kw)),
                  lambda: config_from_dict({"model": kw})):
        with pytest.raises(ConfigError, match=message):
            check()


def test_sections_built_in_python_share_the_yaml_checks():
    from jaxlm.config import OptimConfig, TrainConfig
    cfg = Config(train=TrainConfig(batch_size=5, grad_accum=2))
    with pytest.raises(ConfigError, match="2 must divide train.batch_size=5"):
        cfg.validate()
    with pytest.raises(ConfigError, match="2 must divide train.batch_size=5"):
        config_from_dict({"train": {"batch_size": 5, "grad_accum": 2}})
    with pytest.raises(ConfigError, match="optim.b1': must be in"):
        OptimConfig(b1=1.5).validate()
    with pytest.raises(ConfigError, match="optim.name' is 'adamx'"):
        Config(optim=OptimConfig(name="adamx")).validate()
    with pytest.raises(ConfigError, match="'model' must be a ModelConfig"):
        Config(model={"d_model": 8}).validate()
    Config().validate()  # the defaults are valid


def test_floats_written_the_way_users_write_them():
    assert config_from_dict({}, ["optim.lr=3e-4"]).optim.lr == pytest.approx(3e-4)
    with pytest.raises(ConfigError, match="optim.lr' must be of type float"):
        config_from_dict({}, ["optim.lr=fast"])


def test_set_keeps_string_values_as_typed_and_templates_are_checked():
    from jaxlm.config import load_config
    cfg = load_config(None, ["generative.prompt_template=Q: {question}",  # YAML: a mapping
                             'generative.target_template="{answer}\\n"',  # quoted: escapes apply
                             "name=123", "optim.lr=3e-4", "data.labels=[a, b]", "model.norm=null"])
    assert cfg.generative.prompt_template == "Q: {question}"
    assert cfg.generative.target_template == "{answer}\n"
    assert cfg.name == "123" and cfg.optim.lr == 3e-4 and cfg.data.labels == ["a", "b"]
    assert cfg.model.norm is None
    for bad, key in (("generative.prompt_template=Q: {}", "prompt_template"),
                     ("generative.target_template={a.b}", "target_template"),
                     ("generative.prompt_template={oops", "prompt_template"),
                     ("generative.overlong=cut", "overlong")):
        with pytest.raises(ConfigError, match=key):
            load_config(None, [bad])
