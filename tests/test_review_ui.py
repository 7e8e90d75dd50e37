"""The review UI in a real browser: Debian's Chromium, headless, driven by Playwright, against `mlflow server`."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from fraudloop.models.registry import CHALLENGER, CHAMPION, alias_version, server_command, server_env
from fraudloop.pipelines import jobs
from fraudloop.pipelines.data.history import write_history
from fraudloop.pipelines.demo.run import wait_http
from fraudloop.streaming.broker import free_port

pytestmark = pytest.mark.integration
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SCREENSHOT = os.environ.get("FRAUDLOOP_SCREENSHOT")  # set to refresh the README's picture


@pytest.fixture
def reviewed(registry, small_history, small_labels, tmp_path, monkeypatch):
    """A champion that passed validation and a rejected challenger, served by a real MLflow server."""
    monkeypatch.setenv("FRAUDLOOP_ACTOR", "review-ui-test")
    calm = small_history[small_history["time"] < small_history["time"].min() + 58 * 86_400]
    write_history(tmp_path / "history", calm, small_labels)
    built = jobs.build_training_set(None, maturity_days=4.0, history=str(tmp_path / "history"))
    # A 14-day holdout: 400 cards bring too few frauds in 7 days for the gates' evidence minimums
    settings = {"train_days": 21, "delay_days": 0, "test_days": 14, "maturity_days": 4.0, "num_boost_round": 150}
    good = jobs.train_challenger(built["uri"], **settings)
    verdict = jobs.validate_version(built["uri"], good["version"])
    jobs.promote_version(good["version"], reason=verdict["summary"])
    bad = jobs.train_challenger(built["uri"], **settings, shuffle_labels=True)
    verdict = jobs.validate_version(built["uri"], bad["version"])
    jobs.reject(bad["version"], reason=verdict["summary"])
    assert alias_version(registry, CHAMPION) == good["version"]
    assert alias_version(registry, CHALLENGER) == bad["version"]

    port = free_port()
    with open(tmp_path / "mlflow.log", "wb") as log:
        server = subprocess.Popen(server_command(registry, "127.0.0.1", port), env=server_env(), stdout=log,
                                  stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_http(f"{url}/health", server, 90, "the MLflow server")
        yield url, good["version"], bad["version"]
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_the_model_page_shows_both_versions_their_aliases_verdicts_and_metrics(reviewed, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    url, champion, challenger = reviewed
    chromium = shutil.which("chromium")
    assert chromium, "Debian's chromium is not installed: ./dev test installs it (apt-get install chromium)"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.goto(f"{url}/#/models/card-fraud")
        expect(page.get_by_text(f"Version {champion}", exact=True)).to_be_visible(timeout=60_000)
        expect(page.get_by_text(f"Version {challenger}", exact=True)).to_be_visible()
        expect(page.get_by_text(f"@ {CHAMPION}").first).to_be_visible()
        expect(page.get_by_text(f"@ {CHALLENGER}").first).to_be_visible()
        assistant = page.locator("button[aria-label*='lose']")  # MLflow's assistant side panel, if shown
        if assistant.count():
            assistant.first.click()
        page.screenshot(path=str(tmp_path / "model.png"), full_page=True)
        if SCREENSHOT:
            Path(SCREENSHOT).write_bytes((tmp_path / "model.png").read_bytes())

        for version, status in ((champion, "passed"), (challenger, "failed")):
            page.goto(f"{url}/#/models/card-fraud/versions/{version}")
            expect(page.get_by_text("validation_status").first).to_be_visible(timeout=60_000)
            expect(page.get_by_text(status, exact=True).first).to_be_visible()
            text = page.locator("body").inner_text()
            assert f"Validation of version {version}" in text and "average_precision" in text
            assert "training_cpu_seconds" in text and "predict_us_per_row_compiled" in text  # cost beside quality
        browser.close()


def test_an_analysts_verdict_on_the_review_page_reaches_the_store_and_the_next_training_set(
        broker, served, small_history, tmp_path):
    """The review queue page in a real browser: the open cases by priority; a fraud verdict clicked there goes to the
    labels topic, through the scorer into the store with its source and analyst, and into the next training set,
    while a reviewed case nobody worked stays unknown (left out of it)."""
    import threading
    import urllib.error
    import urllib.request

    from fraudloop.models.store import Store
    from fraudloop.pipelines.retraining.training_set import from_store
    from fraudloop.streaming.review import create_app
    from playwright.sync_api import expect, sync_playwright
    from werkzeug.serving import make_server

    from tests.streaming_helpers import RunningScorer, read_topic, scorer_config, send_transactions

    registry, _, _ = served
    store_url = f"sqlite:///{tmp_path / 'scoring.db'}"
    # thresholds that send a good share to review
    config = scorer_config(broker.bootstrap, store_url, review_threshold=0.02, decline_threshold=0.999)
    stream = small_history.iloc[-3_000:]
    send_transactions(broker.bootstrap, config.transactions_topic, stream)
    store = Store(store_url)
    with RunningScorer(config, registry):
        read_topic(broker.bootstrap, config.decisions_topic, lambda r: len(r) >= len(stream), timeout=120)
        newest = store.newest_event_time()
        cases = store.review_cases(newest, config.review_expiry_hours * 3_600)
        assert len(cases) >= 3 and cases["score"].is_monotonic_decreasing
        # the page on the simulated stream's own clock: its cases are years old by the wall clock
        server = make_server("127.0.0.1", 0, create_app(config.model_copy(update={"event_clock": "stream"})),
                             threaded=True)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{server.port}"
        try:
            chromium = shutil.which("chromium")
            assert chromium, "Debian's chromium is not installed: ./dev test installs it (apt-get install chromium)"
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_FLAGS)
                page = browser.new_page(viewport={"width": 1400, "height": 900})
                page.goto(url)
                first = page.locator("section.case").first
                top = cases.iloc[0]
                expect(first).to_have_attribute("data-transaction", top["transaction_id"], timeout=30_000)
                text = first.inner_text()
                assert f"score {top['score']:.3f}" in text and "decided by model" in text
                assert "amount" in text and "The card's recent history" in text  # features and history shown
                first.get_by_role("button", name="Fraud").click()  # no name yet: the browser asks for it
                expect(page.locator("#analyst")).to_be_focused()
                page.fill("#analyst", "ada")
                first.get_by_role("button", name="Fraud").click()
                expect(page.get_by_role("status")).to_contain_text(f"{top['transaction_id']}: fraud, by ada")
                expect(page.locator(f"section[data-transaction='{top['transaction_id']}']")).to_have_count(0)
                browser.close()
            # through the labels topic and the scorer into the store
            deadline = time.monotonic() + 60
            while not (stored := [lb for lb in store.all_labels() if lb.source == "review"]):
                assert time.monotonic() < deadline, "the verdict never reached the store"
                time.sleep(0.2)
            assert [(lb.transaction_id, lb.is_fraud, lb.analyst) for lb in stored] == [(top["transaction_id"], True,
                                                                                       "ada")]
            assert stored[0].known_at == newest  # on the stream's clock, as configured
            with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
                metrics = response.read().decode()
            assert f"fraud_review_queue_open {len(store.review_cases(newest, 72 * 3_600, 10**6))}.0" in metrics
            assert "fraud_review_worked_per_day 1.0" in metrics
            # a second verdict on the case (a double click, another analyst) is refused, not a second label
            again = urllib.request.Request(f"{url}/cases/{top['transaction_id']}/verdict", method="POST",
                                           data=b"verdict=genuine&analyst=bob")
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(again, timeout=10)
            assert refused.value.code == 409
        finally:
            server.shutdown()
    frame = from_store(store_url, newest, maturity_seconds=0, lookback_seconds=30 * 86_400)
    store.close()
    worked = frame[frame["transaction_id"] == top["transaction_id"]]
    assert worked[["is_fraud", "label_source"]].values.tolist() == [[True, "review"]]
    unworked = set(cases["transaction_id"].iloc[1:])
    assert unworked and unworked.isdisjoint(frame["transaction_id"])  # no verdict: unknown, not genuine
    assert frame.attrs["unknown_rows"] >= len(unworked)
