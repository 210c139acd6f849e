"""The MLflow UI, seen as a user sees it (issue 16, Build 4; issue 24, finding 18): a finished
run opened in headless Chromium against a real `mlflow ui` on loopback, at the link `gan-dist
train` prints, and checked on first view, without touching a control: the run's page in the
model-training view with the newest repair grid at the top, its charts with the grid's card
first and its picture inside the card, the experiment on its training runs with metric
columns, and the registered model with its alias and signature. Screenshots are kept in
test-screenshots/ (or $GAN_DIST_SCREENSHOTS)."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest

from support import MlflowServer, run_cli, tiny

pytestmark = pytest.mark.integration

NAME = "ui-test"
STEPS = 4


@pytest.fixture(scope="module")
def chromium() -> Path:
    from support import browser

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
    settings = {
        "tracking.experiment": "ui-test",
        "train.log_every": 1,
        "data.val": packed,
    }
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
        (folder / "train.out").write_text(trained.stdout)
        registered = run_cli(
            "models", "register", str(folder / "run"), "--name", NAME, "--alias", "champion"
        )
        assert registered.returncode == 0, registered.stdout + registered.stderr
    return folder, store


def test_a_finished_run_renders_in_the_mlflow_ui(chromium, finished_run):
    from mlflow import MlflowClient
    from playwright.sync_api import expect, sync_playwright

    from gan_dist.tracking.experiments import ui_path

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

            # the run, at the link `gan-dist train` printed, as a person first sees it
            said = (folder / "train.out").read_text()
            link = re.search(r"then open http://127\.0\.0\.1:5000/(\S+)", said)
            assert link and run.info.run_id in link.group(1), said
            page.goto(f"{server.url}/{link.group(1)}")
            newest = page.locator("main img[src*='repair_grid.png']").first
            expect(newest).to_be_visible()
            loaded(newest)
            top = newest.bounding_box()["y"]
            assert top < page.viewport_size["height"], "the newest grid is below the fold"
            expect(page.get_by_text(f"grid/repair at step {STEPS}", exact=True)).to_be_visible()
            side = page.get_by_role("complementary")  # the side bar, in model-training mode
            expect(side.get_by_role("link", name="Runs", exact=True)).to_be_visible()
            expect(page.get_by_text("Evaluation runs", exact=True)).to_have_count(0)
            expect(page.get_by_text("Detect Issues")).to_have_count(0)
            page.screenshot(path=shots / "2-run-first-view.png")

            # its charts: the grid's card first, its picture inside the card, a short label
            page.get_by_role("tab", name="Model metrics").click()
            card = page.locator("h4", has_text="grid/repair").first
            expect(card).to_be_visible()
            picture = page.locator("img[src*='grid~repair%2Bstep%2B0%2B']").first
            expect(picture).to_be_visible()  # step 0: the card opens there, before training
            loaded(picture)
            assert picture.bounding_box()["y"] < page.viewport_size["height"]
            label = page.get_by_text("model.generator.name=unet", exact=False).first
            assert len(label.inner_text()) < 200, label.inner_text()  # was the whole recipe
            expect(page.get_by_text("lr (2)", exact=False)).to_have_count(0)  # 2e-4 drawn as 0
            page.screenshot(path=shots / "3-run-charts-first-view.png")
            search = page.get_by_placeholder("Search metric charts")
            for metric, shot in (("train/d_loss", "3b-loss"), ("val/hole_psnr", "3c-validation")):
                search.fill(metric)
                legend = page.get_by_text(f"run ({metric})", exact=True)
                expect(legend).to_be_visible()
                page.screenshot(path=shots / f"{shot}.png")
            search.fill("samples")  # the grid and the validation count have distinct titles
            expect(page.get_by_text("run (val/samples)", exact=True)).to_be_visible()
            expect(page.get_by_text("samples", exact=True)).to_have_count(1)

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


def loaded(image) -> None:
    """Waits (at most a minute) until a page's picture has been fetched and decoded."""
    deadline = time.monotonic() + 60
    while not image.evaluate("img => img.complete && img.naturalWidth > 0"):
        assert time.monotonic() < deadline, "the picture never loaded"
        time.sleep(0.5)
