"""The served model compiled to machine code with lleaves (LLVM): ~7x cheaper per row than Booster.predict.

Compiling a 600-tree model takes a few CPU seconds and, in a thread, would hold the scorer's GIL for much
of that time; so it runs in a child process (`python -m streaming.compiled MODEL OUTPUT`) while the
scorer keeps serving the LightGBM booster of the same version. The shared object is cached under
FRAUDLOOP_HOME by the hash of the model text, so a restart loads it in milliseconds.
"""

from __future__ import annotations

import hashlib
import os
import platform
import subprocess
import sys
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import lightgbm as lgb
import numpy as np
from fraudloop.models.home import fraudloop_home

# A compiled model must agree with LightGBM (they differ in the last float bits only), on rows that reach
# every kind of branch: missing values, zeros, and magnitudes from tiny to large.
AGREEMENT = 1e-9
_rng = np.random.default_rng(0)
CHECK_ROWS = np.exp(_rng.uniform(-4.0, 9.0, size=(300, 64)))
CHECK_ROWS[_rng.random(CHECK_ROWS.shape) < 0.1] = np.nan
CHECK_ROWS[_rng.random(CHECK_ROWS.shape) < 0.1] = 0.0


def cache_dir() -> Path:
    return fraudloop_home() / "compiled"


def artifact_paths(model_text: str) -> tuple[Path, Path]:
    """(model text file, shared object): named by what determines the machine code."""
    key = hashlib.sha256(model_text.encode()).hexdigest()[:24]
    stem = f"{key}-lleaves{version('lleaves')}-{platform.machine()}"
    return cache_dir() / f"{stem}.txt", cache_dir() / f"{stem}.so"


def load(model_path: Path, shared_object: Path):
    """The compiled model (lleaves reads the model text for its shape, the machine code from the cache)."""
    import lleaves

    model = lleaves.Model(model_file=str(model_path))
    model.compile(cache=str(shared_object))
    return model


@dataclass
class Compilation:
    """A compilation running in a child process; `result()` once `done()`."""

    model_path: Path
    shared_object: Path
    process: subprocess.Popen | None  # None: found in the cache

    def done(self) -> bool:
        return self.process is None or self.process.poll() is not None

    def result(self, booster: lgb.Booster):
        """The compiled model, checked against the booster; raises if compiling failed or they disagree."""
        if self.process is not None and self.process.returncode != 0:
            error = self.process.stderr.read().decode(errors="replace").strip().splitlines() if self.process.stderr \
                else []
            raise RuntimeError(f"compiling failed (exit {self.process.returncode}): {error[-1] if error else ''}")
        model = load(self.model_path, self.shared_object)
        check_rows = CHECK_ROWS[:, : booster.num_feature()]
        expected = booster.predict(check_rows, num_threads=1)
        got = model.predict(check_rows, n_jobs=1)
        if not np.allclose(got, expected, rtol=0, atol=AGREEMENT, equal_nan=True):
            raise RuntimeError(f"the compiled model disagrees with LightGBM by {np.max(np.abs(got - expected)):.3g}")
        return model

    def cancel(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def start(booster: lgb.Booster) -> Compilation:
    """Compile `booster` in a child process, or find it already compiled."""
    text = booster.model_to_string()
    model_path, shared_object = artifact_paths(text)
    model_path.parent.mkdir(parents=True, exist_ok=True)
    if shared_object.exists() and model_path.exists():
        return Compilation(model_path, shared_object, None)
    partial = model_path.with_suffix(f".{os.getpid()}.partial")  # another instance may be writing the same
    partial.write_text(text)
    partial.replace(model_path)
    process = subprocess.Popen([sys.executable, "-m", "fraudloop.streaming.compiled", str(model_path),
                                str(shared_object)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return Compilation(model_path, shared_object, process)


def _compile(model_path: str, shared_object: str) -> None:
    import lleaves

    partial = Path(shared_object).with_suffix(f".{os.getpid()}.partial.so")
    lleaves.Model(model_file=model_path).compile(cache=str(partial))
    partial.replace(shared_object)  # atomically: a reader never sees half a file


if __name__ == "__main__":
    _compile(*sys.argv[1:3])
