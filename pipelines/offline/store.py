"""Layout, schema and writes of the offline store.

    <root>/schema.json                                  {"version": 1, "features": [...]}
    <root>/decisions/day=2026-12-01/part-0.parquet      decisions by the day of their event time
    <root>/labels/day=2026-12-01/part-0.parquet         labels by the day they became known

A label is filed by the day it became known, not by its transaction's day, so a day once past never changes:
exporting it again writes the same file (idempotent), and a chargeback two months late lands in today's folder.
A day is written to a temporary name and moved into place, so a reader never sees half a day.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from fraudloop.models.features import FEATURE_NAMES
from fraudloop.models.settings import settings
from fraudloop.models.units import DAY

SCHEMA_VERSION = 1
DECISIONS, LABELS = "decisions", "labels"
DECISION_SCHEMA = pa.schema([
    ("transaction_id", pa.string()), ("card_id", pa.string()), ("terminal_id", pa.string()),
    ("event_time", pa.float64()), ("amount_cents", pa.int64()), ("score", pa.float64()),
    ("decision", pa.string()), ("rule", pa.string()), ("propensity", pa.float64()),
    ("model_version", pa.string()), ("mode", pa.string()), ("decided_at", pa.float64()),
    *((name, pa.float64()) for name in FEATURE_NAMES),
])
LABEL_SCHEMA = pa.schema([("transaction_id", pa.string()), ("known_at", pa.float64()), ("is_fraud", pa.bool_()),
                          ("source", pa.string())])
SCHEMAS = {DECISIONS: DECISION_SCHEMA, LABELS: LABEL_SCHEMA}


def default_uri() -> str:
    """FRAUDLOOP_OFFLINE_URI (e.g. s3://bucket/fraudloop, shared by Airflow workers), else FRAUDLOOP_HOME/offline."""
    return settings().offline


def day_name(day: int) -> str:
    """Day number (seconds // DAY) as its partition's name."""
    return datetime.fromtimestamp(day * DAY, UTC).date().isoformat()


def day_number(name: str) -> int:
    return int(datetime.fromisoformat(name).replace(tzinfo=UTC).timestamp()) // DAY


@dataclass(frozen=True)
class OfflineStore:
    uri: str

    @property
    def fs(self) -> fsspec.AbstractFileSystem:
        return fsspec.core.url_to_fs(self.uri)[0]

    @property
    def root(self) -> str:
        return fsspec.core.url_to_fs(self.uri)[1].rstrip("/")

    def path(self, kind: str, day: int) -> str:
        return f"{self.root}/{kind}/day={day_name(day)}/part-0.parquet"

    def days(self, kind: str) -> list[int]:
        """The days written, in order."""
        try:
            folders = self.fs.ls(f"{self.root}/{kind}", detail=False)
        except FileNotFoundError:
            return []
        names = (folder.rstrip("/").rsplit("/", 1)[-1] for folder in folders)
        return sorted(day_number(n[4:]) for n in names if n.startswith("day=") and self.fs.exists(
            f"{self.root}/{kind}/{n}/part-0.parquet"))

    def files(self, kind: str, first_day: int, last_day: int) -> list[str]:
        """The day files from `first_day` to `last_day` (inclusive) that exist, as URIs a reader opens."""
        protocol = self.fs.protocol if isinstance(self.fs.protocol, str) else self.fs.protocol[0]
        prefix = "" if protocol in ("file", "local") else f"{protocol}://"
        return [prefix + self.path(kind, d) for d in self.days(kind) if first_day <= d <= last_day]

    def check_schema(self, source: str | None = None) -> None:
        """Write the schema marker on first use; refuse a store written with another schema or feature set, or
        exported from another SQL store (`source`: its fingerprint), whose days would mix with these."""
        marker = f"{self.root}/schema.json"
        mine = {"version": SCHEMA_VERSION, "features": list(FEATURE_NAMES), "source": source}
        if not self.fs.exists(marker):
            self.fs.makedirs(self.root, exist_ok=True)
            with self.fs.open(marker, "w") as out:
                json.dump(mine, out)
            return
        with self.fs.open(marker) as written:
            theirs = json.load(written)
        if theirs.get("source") != source:
            raise ValueError(f"the offline store {self.uri} holds the days of another store (fingerprint "
                             f"{theirs.get('source')}, this one {source}): give each store its own URI "
                             "(FRAUDLOOP_OFFLINE_URI)")
        if theirs != mine:
            raise ValueError(f"the offline store {self.uri} holds schema {theirs.get('version')} with "
                             f"{len(theirs.get('features', []))} features; this version writes schema {SCHEMA_VERSION} "
                             f"with {len(FEATURE_NAMES)}: export into a new URI (FRAUDLOOP_OFFLINE_URI)")

    def write_day(self, kind: str, day: int, tables: Iterable[pa.Table]) -> int:
        """Write one day (replacing what was there) from its tables in order; returns the rows written."""
        final = self.path(kind, day)
        temporary = final.replace("part-0.parquet", f".part-0.{uuid.uuid4().hex}.tmp")  # writers on other hosts too
        self.fs.makedirs(final.rsplit("/", 1)[0], exist_ok=True)
        rows = 0
        try:
            with self.fs.open(temporary, "wb") as out, pq.ParquetWriter(out, SCHEMAS[kind], compression="zstd") as w:
                for table in tables:
                    w.write_table(table.select(SCHEMAS[kind].names).cast(SCHEMAS[kind]), row_group_size=131_072)
                    rows += table.num_rows
            self.fs.mv(temporary, final)
        finally:
            if self.fs.exists(temporary):
                self.fs.rm(temporary)
        return rows

    def rows(self, kind: str, day: int) -> int:
        """Rows in a written day (from the file's footer, not its data)."""
        with self.fs.open(self.path(kind, day), "rb") as source:
            return pq.read_metadata(source).num_rows

    def bytes_on_disk(self, kind: str) -> int:
        return sum(self.fs.du(f"{self.root}/{kind}", total=False).values()) if self.days(kind) else 0
