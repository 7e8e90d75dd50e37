"""Batch jobs: simulate, build features and training sets, train, evaluate, benchmark. Each runs from the CLI."""

from importlib.util import find_spec
from pathlib import Path


def shipped(folder: str) -> Path:
    """A folder shipped with the package (`dags`, `examples`): in the checkout, or inside an installed wheel."""
    spec = find_spec(f"fraudloop.{folder}")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"this install of fraudloop ships no {folder}/ folder")
    return Path(next(iter(spec.submodule_search_locations)))
