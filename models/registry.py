"""MLflow adapter: where runs and versions live, logging a trained model, and loading it to serve.

Embedded default: a SQLite tracking/registry store and a local artifact folder under FRAUDLOOP_HOME
(default ./.fraudloop). Production sets MLFLOW_TRACKING_URI (e.g. a tracking server backed by PostgreSQL).
Models are stored in LightGBM's native text format, so serving never unpickles anything.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightgbm as lgb
import mlflow
import numpy as np
import pandas as pd
from fraudloop.models.aliases import CHALLENGER, CHAMPION  # noqa: F401 (re-exported: registry.CHAMPION)
from fraudloop.models.features import FEATURE_NAMES
from fraudloop.models.home import first_use_lock, sqlite_path
from fraudloop.models.settings import settings
from fraudloop.models.thresholds import from_tags
from mlflow.tracking import MlflowClient

if TYPE_CHECKING:
    from matplotlib.figure import Figure

DEFAULT_MODEL_NAME = "card-fraud"
_CREATED: set[str] = set()  # the SQLite stores this process has created or found made (RegistryConfig.create_store)
FEATURE_SPEC_FILE = "feature_spec.json"


@dataclass(frozen=True)
class RegistryConfig:
    tracking_uri: str
    artifact_root: str
    experiment: str = "card-fraud"
    model_name: str = DEFAULT_MODEL_NAME

    @classmethod
    def from_env(cls, home: str | os.PathLike[str] | None = None) -> RegistryConfig:
        """From the batch side's settings (models/settings.py); `home` instead of FRAUDLOOP_HOME when given."""
        given = settings()
        base = Path(home).resolve() if home else given.home
        uri = given.mlflow_tracking_uri
        if not uri:
            base.mkdir(parents=True, exist_ok=True)
            uri = f"sqlite:///{base / 'mlflow.db'}"
        return cls(tracking_uri=uri, artifact_root=given.artifact_root or (base / "mlartifacts").as_uri(),
                   experiment=given.experiment, model_name=given.model_name)

    def point_mlflow(self) -> None:
        """MLflow's fluent API and models:/ URIs use process-wide URIs: set both to this store."""
        self.create_store()
        mlflow.set_tracking_uri(self.tracking_uri)
        mlflow.set_registry_uri(self.tracking_uri)

    def create_store(self) -> None:
        """Create and migrate an embedded SQLite store once, under a lock.

        MLflow creates its tables on first use, unguarded: two processes doing it at once each run the
        migrations, both fail, and the half-migrated file fails every later command. Once per process and store.
        """
        path = sqlite_path(self.tracking_uri)
        if path is None or self.tracking_uri in _CREATED:
            return
        try:
            import alembic  # noqa: F401 (the embedded store's migrations: the batch role's, not the scorer's)
        except ImportError:
            raise RuntimeError("this install has no embedded MLflow store (the scorer role ships only the MLflow "
                               "client): set MLFLOW_TRACKING_URI to your tracking server") from None
        with first_use_lock(path):
            MlflowClient(self.tracking_uri, registry_uri=self.tracking_uri).search_experiments(max_results=1)
        _CREATED.add(self.tracking_uri)

    def activate(self) -> MlflowClient:
        """Point MLflow at this store and make sure the experiment exists with our artifact root."""
        self.point_mlflow()
        client = MlflowClient(self.tracking_uri, registry_uri=self.tracking_uri)
        experiment_id(self, client, self.experiment)
        mlflow.set_experiment(self.experiment)
        return client


@dataclass(frozen=True)
class RegisteredModel:
    name: str
    version: str
    run_id: str


def log_and_register(
    config: RegistryConfig,
    booster: lgb.Booster,
    *,
    params: dict[str, Any],
    metrics: dict[str, float],
    tags: dict[str, str],
    figures: dict[str, Figure],
    input_example: pd.DataFrame,
    description: str,
    run_name: str,
    artifacts: dict[str, str] | None = None,
    frames: dict[str, pd.DataFrame] | None = None,
) -> RegisteredModel:
    """One MLflow run with everything a reviewer needs, and a new registered model version."""
    from matplotlib import pyplot as plt  # here: serving never draws, and a scorer machine has no matplotlib
    from mlflow.models import infer_signature

    client = config.activate()
    with mlflow.start_run(run_name=run_name) as run:
        mlflow.log_params(params)
        mlflow.log_metrics(metrics)
        mlflow.set_tags(tags)
        for file_name, fig in figures.items():
            mlflow.log_figure(fig, f"evaluation/{file_name}")
            plt.close(fig)
        for file_name, text in (artifacts or {}).items():
            mlflow.log_text(text, file_name)
        for file_name, frame in (frames or {}).items():
            _log_frame(frame, file_name)
        example = input_example[list(FEATURE_NAMES)]
        signature = infer_signature(example, booster.predict(example.to_numpy(np.float64)))
        with tempfile.TemporaryDirectory() as tmp:
            spec = Path(tmp, FEATURE_SPEC_FILE)
            spec.write_text(json.dumps({"features": list(FEATURE_NAMES)}, indent=2))
            info = mlflow.lightgbm.log_model(
                booster,
                name="model",
                signature=signature,
                input_example=example,
                registered_model_name=config.model_name,
                pip_requirements=[f"lightgbm=={lgb.__version__}"],
                extra_files=[str(spec)],
                metadata={"feature_names": list(FEATURE_NAMES)},
            )
    version = str(info.registered_model_version)
    client.update_model_version(config.model_name, version, description=description)
    for key, value in tags.items():
        client.set_model_version_tag(config.model_name, version, key, value)
    return RegisteredModel(config.model_name, version, run.info.run_id)


def _log_frame(frame: pd.DataFrame, artifact_file: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, Path(artifact_file).name)
        frame.to_parquet(path, index=False)
        folder = str(Path(artifact_file).parent) if Path(artifact_file).parent != Path(".") else None
        mlflow.log_artifact(str(path), folder)


# MLflow's server starts job-runner processes (about 250 MB each) for features this project never uses: off
# (the demo report's footprint line shows what the whole demo holds).
SERVER_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def server_env() -> dict[str, str]:
    """The environment to run `server_command` in."""
    return {**os.environ, **SERVER_ENV}


def server_command(config: RegistryConfig, host: str = "127.0.0.1", port: int = 5000) -> list[str]:
    """`mlflow server` over this store: the review UI (and a tracking server for other processes). The store is
    created first, so a server started beside other first users of a fresh home does not race them."""
    import sys

    config.create_store()
    return [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", config.tracking_uri,
            "--default-artifact-root", config.artifact_root, "--host", host, "--port", str(port), "--workers", "1"]


def client(config: RegistryConfig) -> MlflowClient:
    config.point_mlflow()
    return MlflowClient(config.tracking_uri, registry_uri=config.tracking_uri)


def side_experiment(config: RegistryConfig, suffix: str) -> str:
    """The id of `<experiment>-<suffix>` (monitoring reports, alias moves), created on first use."""
    return experiment_id(config, client(config), f"{config.experiment}-{suffix}")


def experiment_id(config: RegistryConfig, mlflow_client: MlflowClient, name: str) -> str:
    """The experiment's id, created with our artifact root if missing; a process creating it at the same moment
    as another finds it made."""
    found = mlflow_client.get_experiment_by_name(name)
    if found:
        return found.experiment_id
    try:
        return mlflow_client.create_experiment(name, artifact_location=f"{config.artifact_root}/{name}")
    except mlflow.exceptions.MlflowException as error:
        if error.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        return mlflow_client.get_experiment_by_name(name).experiment_id


def set_alias(config: RegistryConfig, alias: str, version: str) -> None:
    config.activate().set_registered_model_alias(config.model_name, alias, version)


def alias_version(config: RegistryConfig, alias: str) -> str | None:
    """The version an alias points at, or None when the alias (or the model) does not exist yet. Any other error
    (a registry down, refused, misconfigured) is raised: it must never read as "no champion"."""
    try:
        return str(client(config).get_model_version_by_alias(config.model_name, alias).version)
    except mlflow.exceptions.MlflowException as error:
        if error.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise


def version_info(config: RegistryConfig, version: str):
    return client(config).get_model_version(config.model_name, version)


def version_thresholds(registry_config: RegistryConfig,
                       default: tuple[float, float]) -> Callable[[str], tuple[float, float]]:
    """Each version's own thresholds from its tags (looked up once), `default` for one without."""
    cache: dict[str, tuple[float, float]] = {}

    def of(version: str) -> tuple[float, float]:
        if version not in cache:
            try:
                tags = version_info(registry_config, version).tags
            except Exception:  # noqa: BLE001 - a version the registry no longer has: the default
                tags = {}
            cache[version] = from_tags(tags) or default
        return cache[version]
    return of


def tag_version(config: RegistryConfig, version: str, tags: dict[str, str]) -> None:
    mlflow_client = client(config)
    for key, value in tags.items():
        mlflow_client.set_model_version_tag(config.model_name, version, key, value)


def load_run_frame(config: RegistryConfig, run_id: str, artifact_file: str) -> pd.DataFrame:
    config.point_mlflow()
    with tempfile.TemporaryDirectory() as tmp:
        local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact_file, dst_path=tmp,
                                                    tracking_uri=config.tracking_uri)
        return pd.read_parquet(local)


def load_booster(config: RegistryConfig, alias: str = CHAMPION) -> tuple[lgb.Booster, str]:
    """The native LightGBM booster behind `models:/<name>@<alias>` and its version number."""
    version = client(config).get_model_version_by_alias(config.model_name, alias).version
    return load_version(config, version), str(version)


class IncompatibleModel(ValueError):
    """A version that was fetched but cannot serve here (no LightGBM file, other features): refused for good,
    where a failure to fetch it is tried again."""


def load_version(config: RegistryConfig, version: str) -> lgb.Booster:
    config.point_mlflow()
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(mlflow.artifacts.download_artifacts(f"models:/{config.model_name}/{version}", dst_path=tmp,
                                                         tracking_uri=config.tracking_uri))
        model_file = local / "model.lgb"
        if not model_file.exists():
            raise IncompatibleModel(f"model version {version} has no native LightGBM file (model.lgb)")
        try:
            booster = lgb.Booster(model_file=str(model_file))
        except lgb.basic.LightGBMError as error:
            raise IncompatibleModel(f"model version {version}: {error}") from None
        spec_file = next(local.rglob(FEATURE_SPEC_FILE), None)
        features = json.loads(spec_file.read_text())["features"] if spec_file else booster.feature_name()
    if list(features) != list(FEATURE_NAMES) or booster.feature_name() != list(FEATURE_NAMES):
        raise IncompatibleModel(f"model version {version} expects features {features}, this code computes "
                                f"{FEATURE_NAMES}")
    return booster
