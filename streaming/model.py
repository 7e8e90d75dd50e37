"""The model the scorer serves: the registry alias's version, swapped between batches, never a broken one.

A new version is loaded and smoke-tested before it replaces the old. One that loads and fails its checks is
refused (and not retried) while the old keeps serving; one that fails to load (registry or artifact store
unreachable, a timeout) is tried again with backoff. If the registry cannot be reached the scorer keeps the
model in hand, and says so once the alias has named a version it does not serve for longer than a grace period.
A new version serves through LightGBM at once and through its compiled form (streaming/compiled.py) as
soon as that is built and checked; a failed compilation leaves LightGBM serving.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import lightgbm as lgb
import numpy as np
from fraudloop.models.features import N_FEATURES
from fraudloop.models.registry import IncompatibleModel, RegistryConfig, load_version
from fraudloop.models.thresholds import from_tags
from fraudloop.streaming import compiled
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)
MAX_BACKOFF = 300.0  # seconds between tries to load a version that failed to load
# Smoke rows: all-missing, all-zero and a typical-looking transaction.
SMOKE_ROWS = np.vstack([np.full(N_FEATURES, np.nan), np.zeros(N_FEATURES), np.linspace(0.0, 50.0, N_FEATURES)])


@dataclass(frozen=True)
class ServingModel:
    name: str
    version: str
    booster: lgb.Booster
    compiled: Any = None  # the lleaves model, once built
    thresholds: tuple[float, float] | None = None  # (review, decline) the version was validated with (its tags)

    def thresholds_or(self, default: tuple[float, float]) -> tuple[float, float]:
        """The version's own thresholds; `default` (the scorer's settings) for a version that has none."""
        return self.thresholds or default

    def predict(self, features: np.ndarray) -> np.ndarray:
        if self.compiled is not None:
            return self.compiled.predict(features, n_jobs=1)
        return self.booster.predict(features, num_threads=1)


def smoke_test(booster: lgb.Booster) -> None:
    scores = booster.predict(SMOKE_ROWS, num_threads=1)
    if scores.shape != (len(SMOKE_ROWS),) or not np.all(np.isfinite(scores)) or np.any((scores < 0) | (scores > 1)):
        raise ValueError(f"smoke prediction gave {scores!r}, not probabilities")


class ModelHolder:
    """The served model. `refresh()` between batches swaps in a new healthy version of the alias: checked
    there and then, or, once `watch()` is called, checked and loaded on a thread of its own so a slow or
    unreachable registry (an HTTP client retrying for minutes) never holds up a batch."""

    def __init__(self, name: str, resolve: Callable[[], str], load: Callable[[str], lgb.Booster],
                 check_every: float = 5.0, on_event: Callable[[str, str], None] = lambda kind, version: None,
                 compile_models: bool = True, version_tags: Callable[[str], dict[str, str]] = lambda version: {}):
        self.name, self._resolve, self._load, self._tags = name, resolve, load, version_tags
        self.check_every, self._on_event, self.compile_models = check_every, on_event, compile_models
        self.current: ServingModel | None = None
        self.refused: dict[str, str] = {}
        self.alias_version: str | None = None  # what the alias named at the last successful check
        self._failed_loads: dict[str, tuple[int, float]] = {}  # version -> (failures, when to try again)
        self._behind_since: float | None = None  # monotonic time the alias was first seen ahead of the served
        self._reported_behind = False
        self._checked = -float("inf")
        self._compiling: compiled.Compilation | None = None
        self._loaded: queue.SimpleQueue[ServingModel] = queue.SimpleQueue()  # by the watcher, not yet served
        self._watching: threading.Event | None = None  # set: stop watching

    @classmethod
    def from_registry(cls, config: RegistryConfig, alias: str, check_every: float, optional: bool = False,
                      **kwargs) -> ModelHolder:
        """`optional`: the alias may not exist (the shadow's `challenger`): then nothing is served, quietly."""
        config.create_store()
        client = MlflowClient(config.tracking_uri, registry_uri=config.tracking_uri)

        def resolve() -> str | None:
            try:
                return str(client.get_model_version_by_alias(config.model_name, alias).version)
            except MlflowException as error:
                if optional and error.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                    return None
                raise

        return cls(config.model_name, resolve, lambda version: load_version(config, version), check_every,
                   version_tags=lambda version: client.get_model_version(config.model_name, version).tags, **kwargs)

    def refresh(self, force: bool = False) -> bool:
        """Between batches: swap if the alias names a new, healthy version (checked at most every check_every
        seconds, or by the watcher). Returns whether it swapped."""
        self._adopt_compiled()
        if self._watching is not None and not force:
            newest = None
            while not self._loaded.empty():
                newest = self._loaded.get()
            return newest is not None and self._serve(newest)
        now = time.monotonic()
        if not force and now - self._checked < self.check_every:
            return False
        self._checked = now
        candidate = self._check(self.current.version if self.current else None)
        return candidate is not None and self._serve(candidate)

    def watch(self) -> None:
        """Check and load new versions on a daemon thread from now on; `refresh()` only swaps them in."""
        if self._watching is None:
            self._watching = threading.Event()
            threading.Thread(target=self._watch, args=(self._watching,), name="model-watch", daemon=True).start()

    def _watch(self, stop: threading.Event) -> None:
        loaded = self.current.version if self.current else None
        while not stop.wait(self.check_every):
            candidate = self._check(loaded)
            if candidate is not None:
                loaded = candidate.version
                self._loaded.put(candidate)

    def _check(self, serving: str | None) -> ServingModel | None:
        """The alias's version, loaded and smoke-tested, if it is neither `serving` nor refused before."""
        try:
            version = self._resolve()
        except Exception as error:  # registry down or alias missing: keep serving what we have
            log.warning("model registry check failed (%s); serving version %s", error, serving or "none")
            self._on_event("registry_error", "")
            return None
        self.alias_version = version
        if version is None:  # an optional alias that is not set (yet)
            return None
        if version != serving and self._behind_since is None:
            self._behind_since = time.monotonic()
        failures, retry_at = self._failed_loads.get(version, (0, 0.0))
        if version == serving or version in self.refused or time.monotonic() < retry_at:
            return None
        try:
            booster = self._load(version)
            tags = self._tags(version)
            thresholds = from_tags(tags)
            if thresholds is None and "review_threshold" in tags:
                log.warning("%s version %s has unusable threshold tags (%s / %s): it serves at the scorer's own",
                            self.name, version, tags.get("review_threshold"), tags.get("decline_threshold"))
        except IncompatibleModel as error:
            return self._refuse(version, error)
        except Exception as error:  # transient until shown otherwise: tried again, each time later
            wait = min(self.check_every * 2 ** failures, MAX_BACKOFF)
            self._failed_loads[version] = (failures + 1, time.monotonic() + wait)
            log.warning("%s version %s could not be loaded (%s); trying again in %.0f s", self.name, version,
                        error, wait)
            self._on_event("load_failed", version)
            return None
        self._failed_loads.pop(version, None)
        try:
            smoke_test(booster)
        except Exception as error:
            return self._refuse(version, error)
        return ServingModel(self.name, version, booster, thresholds=thresholds)

    def _refuse(self, version: str, error: Exception) -> None:
        self.refused[version] = str(error)
        log.error("refused %s version %s: %s", self.name, version, error)
        self._on_event("refused", version)

    def behind_alias(self, grace: float) -> float:
        """Seconds the alias has named a version other than the one served (0 when they agree); logged once
        an episode lasts longer than `grace` seconds."""
        serving = self.current.version if self.current else None
        if self.alias_version is None or self.alias_version == serving:
            self._behind_since, self._reported_behind = None, False
            return 0.0
        now = time.monotonic()
        if self._behind_since is None:
            self._behind_since = now
        behind = now - self._behind_since
        if behind > grace and not self._reported_behind:
            self._reported_behind = True
            reason = self.refused.get(self.alias_version) or "not loaded yet"
            log.error("the alias names %s version %s but version %s has served for %.0f s: %s", self.name,
                      self.alias_version, serving, behind, reason)
        return behind

    def _serve(self, model: ServingModel) -> bool:
        if self.current is not None and model.version == self.current.version:
            return False
        previous = self.current.version if self.current else None
        self.current = model
        log.info("serving %s version %s (was %s)", self.name, model.version, previous)
        self._on_event("swapped", model.version)
        self._start_compiling(model.booster)
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

    def close(self) -> None:
        """Stop watching the registry and compiling."""
        if self._watching is not None:
            self._watching.set()
        self.cancel_compiling()

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
