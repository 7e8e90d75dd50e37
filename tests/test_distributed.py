"""Training past one machine: LightGBM's Dask interface on a LocalCluster gives a model of the single-machine
path's quality from the same training set."""

from __future__ import annotations

import pytest
from fraudloop.models.metrics import evaluate
from fraudloop.models.training import TrainParams, fit, predict
from fraudloop.models.units import DAY
from fraudloop.pipelines.retraining import training_set
from fraudloop.pipelines.retraining.distributed import fit_on_cluster
from fraudloop.pipelines.retraining.train import BuildConfig, train_challenger, training_split


def test_a_dask_cluster_trains_a_model_as_good_as_one_machine(tmp_path, small_history, small_labels, registry):
    from distributed import Client, LocalCluster

    rows = training_set.history_rows(small_history, small_labels)
    frame = training_set.training_set_as_of(rows, small_labels, float(small_history["time"].max()), 4 * DAY)
    uri = training_set.write(frame, tmp_path / "set.parquet")
    config = BuildConfig(train_days=21, delay_days=7, test_days=7, params=TrainParams(num_boost_round=150))
    split, feedback_from, train, test, _ = training_split(frame, config)
    holdout = frame[test]

    def quality(booster):
        return evaluate(holdout["event_time"].to_numpy(), holdout["card_id"].to_numpy(),
                        holdout["is_fraud"].to_numpy(), predict(booster, holdout))["average_precision"]

    alone = fit(frame[train], frame["is_fraud"].to_numpy()[train], config.params)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        spread = fit_on_cluster(uri, split, feedback_from, config.params, client)
        # the retrain step, asked to train on the cluster by its address: a registered version of that quality
        version = train_challenger(frame, registry, config, source=uri, scheduler=cluster.scheduler_address)
    assert spread.num_trees() == alone.num_trees() == 150
    assert quality(spread) == pytest.approx(quality(alone), abs=0.005)
    assert version.metrics["average_precision"] == pytest.approx(quality(alone), abs=0.005)
