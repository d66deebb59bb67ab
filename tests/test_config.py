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
