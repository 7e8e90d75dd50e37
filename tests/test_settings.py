"""The batch side's settings (models/settings.py): one typed object from the environment, bad values in one line."""

from __future__ import annotations

import pytest
from fraudloop.models.settings import settings
from fraudloop.pipelines.cli import main


def test_defaults_live_under_the_home(tmp_path, monkeypatch):
    for name in ("FRAUDLOOP_STORE_URL", "FRAUDLOOP_OFFLINE_URI", "FRAUDLOOP_TRAINING_SETS_URI", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("FRAUDLOOP_HOME", str(tmp_path))
    given = settings()
    assert given.home == tmp_path.resolve()
    assert given.store == f"sqlite:///{tmp_path / 'scoring.db'}"
    assert given.offline == (tmp_path / "offline").as_uri()
    assert given.training_sets == (tmp_path / "training-sets").as_uri()
    monkeypatch.setenv("FRAUDLOOP_OFFLINE_URI", "s3://bucket/fraudloop/")
    assert settings().offline == "s3://bucket/fraudloop"


@pytest.mark.parametrize(("variable", "value", "said"), [
    ("FRAUDLOOP_STORE_URL", "mysql://db/x", "FRAUDLOOP_STORE_URL='mysql://db/x': must be a sqlite:/// or postgresql://"),
    ("FRAUDLOOP_TRAINING_SETS_URI", "/data/sets", "FRAUDLOOP_TRAINING_SETS_URI='/data/sets': must be a URI"),
    ("FRAUDLOOP_RATES_FILE", "/no/such/rates.toml", "FRAUDLOOP_RATES_FILE='/no/such/rates.toml': no such file"),
])
def test_a_bad_value_is_one_line_naming_the_variable(variable, value, said, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FRAUDLOOP_HOME", str(tmp_path))
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValueError, match="^" + said.replace("(", r"\(").replace("?", r"\?")):
        settings()
    assert main(["export"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"fraudloop export: error: {said}") and "\n" not in err
