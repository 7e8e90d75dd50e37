"""Where the project keeps its local state: FRAUDLOOP_HOME, default ./.fraudloop (stores, artifacts, runs).

Several processes may touch a fresh home at the same instant (two Airflow tasks of one DAG run, a scorer and a
CLI command): whatever creates a store there (the MLflow and scorer stores, the local Airflow's metadata DB, an
MLflow experiment) does it under `first_use_lock` or tolerates finding it made, so exactly one of them creates it
and the others find it made.
"""

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def fraudloop_home() -> Path:
    from fraudloop.models.settings import settings

    return settings().home


@contextmanager
def first_use_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on `<path>.lock` (beside the file a store lives in) for the block.

    An advisory `flock`: released by the kernel when its holder exits, so a killed process never leaves a
    stale lock behind. Local file systems only, like the SQLite files it guards.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def sqlite_path(url: str) -> Path | None:
    """The file of a `sqlite:///...` URL (None for any other URL, or an in-memory database)."""
    for prefix in ("sqlite:///", "sqlite+pysqlite:///"):
        if url.startswith(prefix) and url[len(prefix):] not in ("", ":memory:"):
            return Path(url[len(prefix):].split("?", 1)[0])
    return None
