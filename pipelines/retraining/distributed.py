"""Training past one machine: the training set read by Dask and trained on with LightGBM's Dask interface.

The same Parquet set every other step reads; each partition picks its training rows alone (`train.training_rows`,
row by row), so no worker needs the whole set. LightGBM trains data-parallel across the workers that hold rows
(`lightgbm.dask`), with the parameters and weights of the single-machine path; a test on a `LocalCluster` holds the
two to the same quality. What this buys and costs at volume: docs/scaling.md.
"""

from __future__ import annotations

import lightgbm as lgb
import pandas as pd
from fraudloop.models.features import FEATURE_NAMES
from fraudloop.models.training import TrainParams
from fraudloop.pipelines.retraining.protocol import Split
from fraudloop.pipelines.retraining.train import training_rows


def _rows(partition: pd.DataFrame, split: Split, feedback_from: float | None) -> pd.DataFrame:
    return partition[training_rows(partition, split, feedback_from)]


def fit_on_cluster(uri: str, split: Split, feedback_from: float | None, params: TrainParams,
                   scheduler: str, partitions: int | None = None) -> lgb.Booster:
    """A booster trained on the training rows of the set at `uri` by the Dask cluster at `scheduler` (an address,
    or a `distributed.Client`); `partitions`: how many pieces to spread the rows over (default: one per worker)."""
    import dask.dataframe as dd
    from distributed import Client
    from lightgbm.dask import DaskLGBMClassifier

    client = scheduler if isinstance(scheduler, Client) else Client(scheduler)
    try:
        columns = [*FEATURE_NAMES, "event_time", "mature", "is_fraud", "weight"]
        frame = dd.read_parquet(uri, columns=None)
        frame = frame[[c for c in columns if c in frame.columns]]
        rows = frame.map_partitions(_rows, split, feedback_from, meta=frame._meta)
        rows = rows.repartition(npartitions=partitions or max(len(client.scheduler_info()["workers"]), 1))
        settings = params.lightgbm()
        settings.pop("num_threads")  # each worker's own; LightGBM's Dask interface sets it from the worker
        model = DaskLGBMClassifier(client=client, n_estimators=params.num_boost_round, **settings)
        weight = rows["weight"] if "weight" in rows.columns else None
        model.fit(rows[list(FEATURE_NAMES)], rows["is_fraud"].astype(int), sample_weight=weight)
        return model.booster_
    finally:
        if client is not scheduler:
            client.close()
