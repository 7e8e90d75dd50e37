"""Benchmarks: each measures, prints and records (Markdown and JSON under benchmarks/)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_record(path: Path, markdown: str, data: Any) -> None:
    """The Markdown for people at `path`, and beside it the JSON for comparison over time."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(markdown)
    path.with_suffix(".json").write_text(json.dumps(data, indent=2, default=str) + "\n")
