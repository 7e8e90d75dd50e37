"""The batch side's settings (retraining, monitoring, the CLI, the DAGs): one typed object from the environment.

The same style as the scorer's (streaming/config.py, pydantic-settings): FRAUDLOOP_<SETTING> variables, and
MLFLOW_TRACKING_URI as MLflow names it. Every value is checked when read, and a bad one is reported in one line
naming the variable (`FRAUDLOOP_STORE_URL='mysql://x': ...`). Read afresh on each call: a test, a DAG task or
the demo may set the environment between two steps of one process.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PREFIX = "FRAUDLOOP_"
STORE_SCHEMES = ("sqlite://", "postgresql://", "postgresql+psycopg://")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=PREFIX, frozen=True, validate_default=True)

    home: Path = Path(".fraudloop")  # local state: the embedded stores, artifacts, training sets, offline store
    # The MLflow tracking and registry store (production: a tracking server on PostgreSQL); empty: SQLite in home
    mlflow_tracking_uri: str = Field("", validation_alias="MLFLOW_TRACKING_URI")
    artifact_root: str = ""  # where model artifacts go (every machine must reach it); empty: home/mlartifacts
    experiment: str = "card-fraud"
    model_name: str = "card-fraud"
    store_url: str = ""  # the scorer's store (sqlite:/// or postgresql://); empty: SQLite in home
    offline_uri: str = ""  # the offline store (any fsspec URI); empty: home/offline
    training_sets_uri: str = ""  # where retrain writes training sets (any fsspec URI); empty: home/training-sets
    dask_scheduler: str = ""  # a Dask scheduler's address to train on; empty: this machine
    rates_file: str = ""  # exchange rates to the reference currency; empty: the packaged table
    actor: str = ""  # who promotions and rollbacks are recorded as; empty: the OS user

    @field_validator("home")
    @classmethod
    def _home(cls, home: Path) -> Path:
        return home.expanduser().resolve()

    @field_validator("store_url")
    @classmethod
    def _store(cls, url: str) -> str:
        if url and not url.startswith(STORE_SCHEMES):
            raise ValueError("must be a sqlite:/// or postgresql:// URL")
        return url

    @field_validator("offline_uri", "training_sets_uri", "artifact_root")
    @classmethod
    def _uri(cls, uri: str) -> str:
        if uri and "://" not in uri:
            raise ValueError("must be a URI with its scheme (file:///..., s3://...), not a bare path")
        return uri.rstrip("/")

    @field_validator("rates_file")
    @classmethod
    def _rates(cls, path: str) -> str:
        if path and not Path(path).is_file():
            raise ValueError("no such file")
        return path

    @property
    def store(self) -> str:
        return self.store_url or f"sqlite:///{self.home / 'scoring.db'}"

    @property
    def offline(self) -> str:
        return self.offline_uri or (self.home / "offline").as_uri()

    @property
    def training_sets(self) -> str:
        return self.training_sets_uri or (self.home / "training-sets").as_uri()


def settings() -> Settings:
    """The batch side's settings as the environment says now; a bad value is a ValueError of one line."""
    try:
        return Settings()
    except ValidationError as error:
        problem = error.errors()[0]
        name = str(problem["loc"][0]) if problem["loc"] else ""
        variable = "MLFLOW_TRACKING_URI" if name == "MLFLOW_TRACKING_URI" else f"{PREFIX}{name.upper()}"
        message = problem["msg"].removeprefix("Value error, ")
        raise ValueError(f"{variable}={os.environ.get(variable, '')!r}: {message}") from None
