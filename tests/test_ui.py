"""The MLflow UI, seen as a user sees it (issue 16, Build 4): a finished run opened in
headless Chromium against a real `mlflow ui` on loopback. The experiment opens on its
training runs with metric columns; the run shows its loss and validation charts and its
repair grid with the step; the registered model shows its alias and signature. Screenshots
are kept in test-screenshots/ (or $GAN_DIST_SCREENSHOTS)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from conftest import MlflowServer, run_cli, tiny

pytestmark = pytest.mark.integration

NAME = "ui-test"
STEPS = 4


@pytest.fixture(scope="module")
def chromium() -> Path:
    import browser

    why = browser.unavailable()
    if why:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the UI test: {why}")
        pytest.skip(why)
    return browser.install()


@pytest.fixture(scope="module")
def finished_run(packed, tmp_path_factory) -> tuple[Path, str]:
    """A completed tiny run with validation and a repair grid, registered as NAME@champion,
    in a store of its own: (its folder, the store's URI)."""
    folder = tmp_path_factory.mktemp("ui")
    store = f"sqlite:///{folder / 'mlflow.db'}"
    settings = {"tracking.experiment": "ui-test", "train.log_every": 1}
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MLFLOW_TRACKING_URI", store)  # it wins over the recipe's tracking.uri
        trained = run_cli(
            "train",
            "quickstart",
            *tiny(packed, STEPS, **settings),
            "--run-dir",
            str(folder / "run"),
        )
        assert trained.returncode == 0, trained.stdout + trained.stderr
        registered = run_cli(
            "models", "register", str(folder / "run"), "--name", NAME, "--alias", "champion"
        )
        assert registered.returncode == 0, registered.stdout + registered.stderr
    return folder, store


def test_a_finished_run_renders_in_the_mlflow_ui(chromium, finished_run):
    from mlflow import MlflowClient
    from playwright.sync_api import expect, sync_playwright

    from gan_dist.track import ui_path

    folder, store = finished_run
    client = MlflowClient(store)
    experiment = client.get_experiment_by_name("ui-test")
    (run,) = client.search_runs([experiment.experiment_id])
    shots = Path(os.environ.get("GAN_DIST_SCREENSHOTS", "test-screenshots")).resolve()
    shots.mkdir(parents=True, exist_ok=True)

    server = MlflowServer(folder, store, command="ui")
    server.start()
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(chromium), args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            page.set_default_timeout(60_000)
            expect.set_options(timeout=60_000)  # the UI loads its data after the page

            # the experiment, as the demo's link opens it: training runs, metric columns
            page.goto(f"{server.url}/{ui_path(experiment.experiment_id)}")
            expect(page.get_by_role("link", name="run", exact=True)).to_be_visible()  # its dir
            for column in ("val/hole_psnr", "val/hole_ssim", "train/g_rec"):
                expect(page.get_by_text(column, exact=True).first).to_be_visible()
            assert "overview" not in page.url and "workflowType=machine_learning" in page.url
            page.screenshot(path=shots / "1-experiment-runs.png")

            # the run's charts: a loss, validation metrics, the repair grid at its last step
            charts = (
                f"{server.url}/#/experiments/{experiment.experiment_id}/runs/"
                f"{run.info.run_id}/model-metrics?workflowType=machine_learning"
            )
            page.goto(charts)
            search = page.get_by_placeholder("Search metric charts")
            for metric, shot in (("train/d_loss", "2-loss"), ("val/hole_psnr", "3-validation")):
                search.fill(metric)
                legend = page.get_by_text(f"run ({metric})", exact=True)
                expect(legend).to_be_visible()
                page.screenshot(path=shots / f"{shot}.png")

            search.fill("repair_grid")
            grid = page.locator(f"img[src*='repair_grid%2Bstep%2B{STEPS}%2B']").first
            expect(grid).to_be_visible()
            deadline = time.monotonic() + 60
            while not grid.evaluate("img => img.complete && img.naturalWidth > 0"):
                assert time.monotonic() < deadline, "the repair grid image never loaded"
                time.sleep(0.5)
            expect(page.locator(f"input[value='{STEPS}']").first).to_be_visible()  # its step
            grid.scroll_into_view_if_needed()  # below the run's params, inside its card
            page.screenshot(path=shots / "4-repair-grid.png")

            # the grid and the validation count have distinct titles
            search.fill("samples")
            expect(page.get_by_text("run (val/samples)", exact=True)).to_be_visible()
            page.screenshot(path=shots / "4b-samples-search.png")
            # (both were titled "samples")
            expect(page.get_by_text("samples", exact=True)).to_have_count(1)
            expect(page.get_by_text("repair_grid", exact=True)).to_have_count(1)

            # the registered model: its alias, and a version with a signature
            page.goto(f"{server.url}/#/models/{NAME}")
            expect(page.get_by_text("champion").first).to_be_visible()
            page.screenshot(path=shots / "5-registered-model.png")
            page.goto(f"{server.url}/#/models/{NAME}/versions/1")
            expect(page.get_by_text("champion").first).to_be_visible()
            # its signature (there was none): image and mask in; image, format, status, detail
            expect(page.get_by_text("Inputs (2)", exact=True)).to_be_visible()
            expect(page.get_by_text("Outputs (4)", exact=True)).to_be_visible()
            page.screenshot(path=shots / "6-model-version.png")
            browser.close()
    finally:
        server.stop()
    print(f"screenshots: {shots}")
