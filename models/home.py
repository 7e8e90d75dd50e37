"""Where the project keeps its local state: FRAUDLOOP_HOME, default ./.fraudloop (stores, artifacts, runs)."""

import os
from pathlib import Path


def fraudloop_home() -> Path:
    return Path(os.environ.get("FRAUDLOOP_HOME", ".fraudloop")).resolve()
