"""The review UI in a real browser: Debian's Chromium, headless, driven by Playwright, against `mlflow server`."""

from __future__ import annotations

import os
import shutil
import subprocess
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
