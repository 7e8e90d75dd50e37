"""The model the scorer serves: the registry alias's version, swapped between batches, never a broken one.

A new version is loaded and smoke-tested before it replaces the old; one that fails is refused (and not
retried) while the old keeps serving. If the registry cannot be reached the scorer keeps the model in hand.
A new version serves through LightGBM at once and through its compiled form (streaming/compiled.py) as
soon as that is built and checked; a failed compilation leaves LightGBM serving.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import lightgbm as lgb
import numpy as np
from mlflow.tracking import MlflowClient

from models.features import N_FEATURES
from models.registry import RegistryConfig, load_version
from streaming import compiled

log = logging.getLogger(__name__)
# Smoke rows: all-missing, all-zero and a typical-looking transaction.
SMOKE_ROWS = np.vstack([np.full(N_FEATURES, np.nan), np.zeros(N_FEATURES), np.linspace(0.0, 50.0, N_FEATURES)])


@dataclass(frozen=True)
class ServingModel:
    name: str
    version: str
    booster: lgb.Booster
    compiled: Any = None  # the lleaves model, once built

    def predict(self, features: np.ndarray) -> np.ndarray:
        if self.compiled is not None:
            return self.compiled.predict(features, n_jobs=1)
        return self.booster.predict(features, num_threads=1)


def smoke_test(booster: lgb.Booster) -> None:
    scores = booster.predict(SMOKE_ROWS, num_threads=1)
    if scores.shape != (len(SMOKE_ROWS),) or not np.all(np.isfinite(scores)) or np.any((scores < 0) | (scores > 1)):
        raise ValueError(f"smoke prediction gave {scores!r}, not probabilities")


class ModelHolder:
    def __init__(self, name: str, resolve: Callable[[], str], load: Callable[[str], lgb.Booster],
                 check_every: float = 5.0, on_event: Callable[[str, str], None] = lambda kind, version: None,
                 compile_models: bool = True):
        self.name, self._resolve, self._load = name, resolve, load
        self.check_every, self._on_event, self.compile_models = check_every, on_event, compile_models
        self.current: ServingModel | None = None
        self.refused: dict[str, str] = {}
        self._checked = -float("inf")
        self._compiling: compiled.Compilation | None = None

    @classmethod
    def from_registry(cls, config: RegistryConfig, alias: str, check_every: float, **kwargs) -> ModelHolder:
        client = MlflowClient(config.tracking_uri, registry_uri=config.tracking_uri)

        def resolve() -> str:
            return str(client.get_model_version_by_alias(config.model_name, alias).version)

        return cls(config.model_name, resolve, lambda version: load_version(config, version), check_every, **kwargs)

    def refresh(self, force: bool = False) -> bool:
        """Check the alias (at most every check_every seconds); swap if it names a new, healthy version."""
        self._adopt_compiled()
        now = time.monotonic()
        if not force and now - self._checked < self.check_every:
            return False
        self._checked = now
        try:
            version = self._resolve()
        except Exception as error:  # registry down or alias missing: keep serving what we have
            log.warning("model registry check failed (%s); serving version %s",
                        error, self.current.version if self.current else "none")
            self._on_event("registry_error", "")
            return False
        if (self.current and version == self.current.version) or version in self.refused:
            return False
        try:
            booster = self._load(version)
            smoke_test(booster)
        except Exception as error:
            self.refused[version] = str(error)
            log.error("refused %s version %s: %s", self.name, version, error)
            self._on_event("refused", version)
            return False
        previous = self.current.version if self.current else None
        self.current = ServingModel(self.name, version, booster)
        log.info("serving %s version %s (was %s)", self.name, version, previous)
        self._on_event("swapped", version)
        self._start_compiling(booster)
        return True

    def _start_compiling(self, booster: lgb.Booster) -> None:
        self.cancel_compiling()
        if not self.compile_models:
            return
        try:
            self._compiling = compiled.start(booster)
        except Exception as error:
            log.warning("version %s will serve through LightGBM: cannot start compiling (%s)",
                        self.current.version, error)
        else:
            self._adopt_compiled()  # already in the cache: serve it at once

    def _adopt_compiled(self) -> None:
        job = self._compiling
        if job is None or not job.done() or self.current is None:
            return
        self._compiling = None
        try:
            model = job.result(self.current.booster)
        except Exception as error:
            log.warning("version %s keeps serving through LightGBM: %s", self.current.version, error)
            self._on_event("compile_failed", self.current.version)
            return
        self.current = replace(self.current, compiled=model)
        log.info("version %s now serves compiled", self.current.version)
        self._on_event("compiled", self.current.version)

    def cancel_compiling(self) -> None:
        if self._compiling is not None:
            self._compiling.cancel()
            self._compiling = None

    def require(self) -> ServingModel:
        if self.current is None:
            self.refresh(force=True)
        if self.current is None:
            refused = self.refused or "none"
            raise RuntimeError(f"no servable version of {self.name!r} in the registry (refused: {refused}); "
                               "train one with 'fraudloop demo' or 'fraudloop train --promote'")
        return self.current
