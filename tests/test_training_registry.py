"""Integration: train on a simulated history, log and register in a real MLflow store, load it back to serve."""

from pathlib import Path

import lightgbm as lgb
import mlflow
import numpy as np
import pytest
from fraudloop.models.features import FEATURE_NAMES, compute_features
from fraudloop.models.registry import CHAMPION, load_booster, load_version, set_alias
from fraudloop.models.training import TrainParams, predict
from fraudloop.pipelines.retraining.train import BuildConfig, build_model
from fraudloop.streaming import compiled
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.integration
FAST = BuildConfig(train_days=21, delay_days=7, test_days=7, params=TrainParams(num_boost_round=80))


@pytest.fixture(scope="module")
def calm(small_history, small_labels):
    """The days before the small history's injected drift, with the features the shared code computes."""
    history = small_history[small_history["time"] < small_history["time"].min() + 58 * 86_400]
    return history, small_labels, compute_features(history, small_labels)


def test_build_registers_a_reviewable_version(registry, calm):
    result = build_model(*calm[:2], registry, FAST, features=calm[2], progress=False)
    assert result.model.version == "1"
    assert result.metrics["roc_auc"] > 0.75 and result.metrics["average_precision"] > 0.3
    assert result.metrics["training_cpu_seconds"] > 0 and result.metrics["training_peak_rss_mb"] > 50

    client = MlflowClient(registry.tracking_uri, registry_uri=registry.tracking_uri)
    version = client.get_model_version(registry.model_name, "1")
    assert "| average_precision |" in version.description and "- train: " in version.description
    assert version.tags["train_rows"].isdigit() and len(version.tags["train_data_fingerprint"]) == 16
    run = client.get_run(result.model.run_id)
    assert {"roc_auc", "average_precision", "card_precision_at_100", "training_cpu_seconds"} <= set(run.data.metrics)
    assert run.data.params["num_boost_round"] == "80" and run.data.tags["test_period"] == result.split["test"]
    # the serving cost beside the quality: measured on the holdout, compiled as the scorer serves it (and cached
    # where the scorer looks for it), which costs less a row than LightGBM
    compiled_us, lightgbm_us = (float(version.tags[f"predict_us_per_row_{k}"]) for k in ("compiled", "lightgbm"))
    assert 0 < compiled_us < lightgbm_us and run.data.metrics["predict_us_per_row_compiled"] == pytest.approx(
        compiled_us, abs=0.01)
    assert float(version.tags["model_kb"]) == pytest.approx(len(result.booster.model_to_string()) / 1024, abs=0.01)
    assert compiled.artifact_paths(result.booster.model_to_string())[1].exists()
    assert "| predict µs a row, compiled" in version.description
    plots = {a.path for a in client.list_artifacts(result.model.run_id, "evaluation")}
    assert plots == {f"evaluation/{n}.png" for n in ("precision_recall", "roc", "calibration", "score_distribution",
                                                       "feature_importance")}


def test_champion_is_stored_natively_and_scores_like_the_trained_booster(registry, calm, tmp_path):
    result = build_model(*calm[:2], registry, FAST, features=calm[2], progress=False)
    set_alias(registry, CHAMPION, result.model.version)

    booster, version = load_booster(registry, CHAMPION)
    assert version == result.model.version and booster.feature_name() == list(FEATURE_NAMES)
    files = {p.name for p in Path(mlflow.artifacts.download_artifacts(f"models:/{registry.model_name}/{version}",
                                                                      dst_path=str(tmp_path))).rglob("*")}
    assert "model.lgb" in files and not any(name.endswith((".pkl", ".pickle")) for name in files)
    rows = calm[2].tail(2_000)
    assert np.array_equal(predict(booster, rows), predict(result.booster, rows))  # the round trip is exact


def test_a_version_computed_on_other_features_is_refused(registry, small_history, calm):
    small_features = calm[2]
    registry.activate()
    labels = small_history["is_fraud"].iloc[:2000].to_numpy()
    data = lgb.Dataset(small_features.iloc[:2000, :3].to_numpy(), label=labels, feature_name=list(FEATURE_NAMES[:3]))
    odd = lgb.train({"objective": "binary", "verbosity": -1}, data, num_boost_round=3)
    with mlflow.start_run():
        info = mlflow.lightgbm.log_model(odd, name="model", registered_model_name=registry.model_name,
                                         pip_requirements=["lightgbm"])
    with pytest.raises(ValueError, match="expects features"):
        load_version(registry, str(info.registered_model_version))


def test_train_params_give_the_amount_its_own_bins_and_check_monotone_features():
    params = TrainParams(max_bin=255, amount_max_bin=4095, increasing=("terminal_risk_1d_delayed",)).lightgbm()
    assert params["max_bin_by_feature"][FEATURE_NAMES.index("amount")] == 4095
    assert set(params["max_bin_by_feature"]) == {255, 4095} and len(params["max_bin_by_feature"]) == len(FEATURE_NAMES)
    assert params["monotone_constraints"][FEATURE_NAMES.index("terminal_risk_1d_delayed")] == 1
    assert sum(params["monotone_constraints"]) == 1
    with pytest.raises(ValueError, match="unknown features: \\['colour'\\]"):
        TrainParams(increasing=("colour",)).lightgbm()
