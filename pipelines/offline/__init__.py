"""The offline store: decisions and labels as day-partitioned Parquet on any fsspec URI, read out of core.

The SQL store (models/store.py) serves the scorer: idempotency, state rebuild, the review queue, a few weeks. What
the batch half reads at an issuer's volume (training sets over 30+ days, the monitor's day) comes from here:
columnar files that a scheduled task exports from the SQL store (`export.py`), built into training sets by DuckDB
without holding the window in memory (`build.py`). docs/scaling.md says why DuckDB and what it costs.
"""
