"""The widgets as a learner meets them: JupyterLab in a real browser (Chromium via Playwright).

Headless tests drive the widgets from the kernel; only a browser shows what a person sees:
widgets that fail to render, a widget printed as text, an image stretched to the page's width.
This starts JupyterLab on 127.0.0.1 (a random port and token) on copies of notebooks 01, 06 and
09 in smoke mode, runs them, and uses the controls as a person would.

Screenshots go to a temporary folder; `--browser-screenshots DIR` also keeps them in DIR.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
RUN_TIMEOUT_S = 300  # a smoke-mode notebook runs in about a minute; the first one also makes the data


def _missing() -> str | None:
    try:
        import playwright  # noqa: F401
    except ImportError:
        return "Python Playwright is not installed: pip install -e \".[dev]\""
    if not CHROMIUM.exists():
        return f"no Chromium at {CHROMIUM}: install Debian's with `apt-get install -y chromium` (.ci/run does)"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A JupyterLab server on copies of notebooks 01, 06 and 09: (base url, token, log path). Stopped after."""
    reason = _missing()
    if reason:
        pytest.skip(reason)
    root = tmp_path_factory.mktemp("lab")
    (root / "notebooks").mkdir()
    for name in ("01_explore_dataset.ipynb", "06_inference_demo.ipynb", "09_drive_the_dream.ipynb"):
        shutil.copy(NOTEBOOKS / name, root / "notebooks" / name)  # the browser may save them: never the originals
    port, token = _free_port(), secrets.token_hex(16)
    jupyter = {f"JUPYTER_{d}_DIR": str(root / f".jupyter-{d.lower()}") for d in ("CONFIG", "RUNTIME")}
    env = os.environ | jupyter | {"KITCHEN_SMOKE": "1", "JUPYTERLAB_WORKSPACES_DIR": str(root / ".workspaces")}
    log = root / "jupyterlab.log"
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
           "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
           "--ServerApp.allow_root=True", "--LabApp.expose_app_in_browser=True", "--LabApp.news_url=",
           "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
    with open(log, "w") as out:
        server = subprocess.Popen(cmd, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2) as r:
                    json.load(r)
                break
            except OSError:
                assert server.poll() is None, f"JupyterLab exited: {log.read_text()[-2000:]}"
                assert time.time() < deadline, f"JupyterLab did not answer in 60 s: {log.read_text()[-2000:]}"
                time.sleep(0.5)
        yield base, token, log
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        yield b
        b.close()


@pytest.fixture
def shots(tmp_path, request):
    """save(page or element, name): a screenshot in tmp_path (and in --browser-screenshots DIR if given)."""
    keep = request.config.getoption("--browser-screenshots")

    def save(target, name: str) -> Path:
        path = tmp_path / f"{name}.png"
        target.screenshot(path=str(path))
        if keep:
            Path(keep).mkdir(parents=True, exist_ok=True)
            shutil.copy(path, Path(keep) / path.name)
        return path

    return save


# Every code cell has run (or one failed), and the kernel is idle.
_NOTEBOOK_STATE = """() => {
  const panel = window.jupyterapp && window.jupyterapp.shell.currentWidget;
  if (!panel || !panel.content || !panel.sessionContext) return {ready: false};
  const kernel = panel.sessionContext.session && panel.sessionContext.session.kernel;
  const cells = panel.content.widgets.filter(c => c.model.type === 'code');
  for (const c of cells) {
    const err = c.model.outputs.toJSON().find(o => o.output_type === 'error');
    if (err) return {ready: true, error: err.ename + ': ' + err.evalue};
  }
  const ran = cells.filter(c => c.model.executionCount !== null).length;
  return {ready: !!kernel && kernel.status === 'idle' && ran === cells.length, ran: ran, cells: cells.length};
}"""


def _run_notebook(page, lab, name: str) -> float:
    """Open notebooks/<name> in JupyterLab, run all its cells, wait until done; the seconds it took."""
    base, token, log = lab
    page.goto(f"{base}/lab/tree/notebooks/{name}?reset&token={token}")
    page.wait_for_function("() => window.jupyterapp && window.jupyterapp.shell.currentWidget "
                           "&& window.jupyterapp.shell.currentWidget.sessionContext", timeout=60_000)
    page.wait_for_function("() => window.jupyterapp.shell.currentWidget.sessionContext.isReady", timeout=60_000)
    t0 = time.time()
    page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
    deadline = t0 + RUN_TIMEOUT_S
    while True:
        state = page.evaluate(_NOTEBOOK_STATE)
        assert not state.get("error"), f"{name} failed in the browser: {state['error']}"
        if state["ready"]:
            return time.time() - t0
        assert time.time() < deadline, f"{name} did not finish in {RUN_TIMEOUT_S} s: {state}; {log.read_text()[-1500:]}"
        time.sleep(1)


def _check_widgets_rendered(page, name: str) -> None:
    text = page.locator(".jp-Notebook").inner_text()
    assert "Error displaying widget" not in text, f"{name}: a widget failed to render"
    as_text = [t for t in page.locator(".jp-OutputArea-output").all_inner_texts()
               if t.lstrip().startswith(("FramePlayer(", "PredictionDemo(", "DriveDemo(", "VBox(", "HBox(", "Image(value="))]
    assert not as_text, f"{name}: a widget was printed as text, not rendered: {as_text[0][:200]}"


def _check_not_stretched(images) -> list[tuple[float, int]]:
    """Each image is shown no wider than its pixels (frames are sent already scaled): (shown, natural) widths."""
    sizes = []
    for img in images.all():
        natural = img.evaluate("el => el.naturalWidth")
        shown = img.bounding_box()["width"]
        assert natural > 0, "an image widget shows nothing"
        assert shown <= natural + 1, f"an image of {natural} px is stretched to {shown:.0f} px"
        sizes.append((shown, natural))
    return sizes


def _wait_changed(read, before, what: str, timeout_s: float = 60):
    deadline = time.time() + timeout_s
    while (now := read()) == before:
        assert time.time() < deadline, f"{what} did not change within {timeout_s:.0f} s"
        time.sleep(0.25)
    return now


def _open_widget(browser, lab, notebook: str, css: str):
    """Run a notebook in a new page and find its one widget of class `css`: (page, widget, seconds)."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    seconds = _run_notebook(page, lab, notebook)
    _check_widgets_rendered(page, notebook[:2])
    widget = page.locator(css)
    assert widget.count() == 1
    widget.scroll_into_view_if_needed()
    return page, widget, seconds


def _move_slider(page, widget, presses: int) -> None:
    """Move the widget's step slider to the right by keyboard, as a person can."""
    widget.locator(".kitchen-step .noUi-handle").focus()
    for _ in range(presses):
        page.keyboard.press("ArrowRight")


def test_frame_player_in_jupyterlab(lab, browser, shots):
    page, player, seconds = _open_widget(browser, lab, "01_explore_dataset.ipynb", ".kitchen-frame-player")
    image, label = player.locator("img.widget-image"), player.locator(".kitchen-caption")
    _check_not_stretched(image)
    shots(player, "01-player-start")
    first_pixels, first_caption = image.screenshot(), label.inner_text()

    _move_slider(page, player, 12)
    _wait_changed(label.inner_text, first_caption, "the caption after moving the slider")
    _wait_changed(image.screenshot, first_pixels, "the frame after moving the slider")
    shots(player, "01-player-moved")

    moved_caption = label.inner_text()
    player.locator(".widget-play button").first.click()  # Play
    _wait_changed(label.inner_text, moved_caption, "the caption while playing", timeout_s=20)
    _check_not_stretched(image)
    shots(page, "01-page")
    print(f"notebook 01 ran in the browser in {seconds:.0f} s")
    page.close()


def test_prediction_demo_in_jupyterlab(lab, browser, shots):
    page, demo, seconds = _open_widget(browser, lab, "06_inference_demo.ipynb", ".kitchen-prediction-demo")
    sizes = _check_not_stretched(demo.locator("img.widget-image:not(.kitchen-rollout)"))
    assert len(sizes) == 4, sizes  # current | predicted | actual | difference
    predicted, info = demo.locator("img.kitchen-predicted"), demo.locator(".kitchen-info")
    shots(demo, "06-demo-start")
    first_pixels, first_info = predicted.screenshot(), info.inner_text()
    assert "PSNR" in first_info

    _move_slider(page, demo, 15)
    moved_info = _wait_changed(info.inner_text, first_info, "the info label after moving the step slider")
    assert moved_info.startswith("step ") and "PSNR" in moved_info
    _wait_changed(predicted.screenshot, first_pixels, "the predicted image after moving the step slider")
    shots(demo, "06-demo-moved")

    rollout = demo.locator("img.kitchen-rollout")  # the notebook may have run one already: a new one is a new src
    before = rollout.get_attribute("src") if rollout.is_visible() else None
    demo.locator(".kitchen-rollout-button").click()
    rollout.wait_for(state="visible", timeout=120_000)
    _wait_changed(lambda: rollout.get_attribute("src"), before, "the rollout animation after clicking Rollout", 120)
    page.wait_for_function("el => el.naturalWidth > 0", arg=rollout.element_handle(), timeout=30_000)
    _check_not_stretched(rollout)
    shots(demo, "06-demo-rollout")
    print(f"notebook 06 ran in the browser in {seconds:.0f} s")
    page.close()


def test_drive_demo_in_jupyterlab(lab, browser, shots):
    page, demo, seconds = _open_widget(browser, lab, "09_drive_the_dream.ipynb", ".kitchen-drive-demo")
    sizes = _check_not_stretched(demo.locator("img.widget-image:not(.kitchen-sparkline)"))
    assert len(sizes) == 3, sizes  # real | dream | difference
    real, dream = demo.locator("img.kitchen-real"), demo.locator("img.kitchen-dream")
    strip, info = demo.locator(".kitchen-divergence"), demo.locator(".kitchen-info")
    shots(demo, "09-drive-start")
    src = lambda img: lambda: img.get_attribute("src")  # noqa: E731  (a new frame is a new blob URL)
    for command in ("x-plus", "z-minus", "close"):
        before_real, before_dream, before_strip = real.get_attribute("src"), dream.get_attribute("src"), strip.inner_text()
        demo.locator(f".kitchen-cmd-{command}").click()
        _wait_changed(src(real), before_real, f"the real frame after pressing {command}")
        _wait_changed(src(dream), before_dream, f"the dream frame after pressing {command}")
        _wait_changed(strip.inner_text, before_strip, f"the divergence strip after pressing {command}")
    numbers = re.findall(r"\d+\.\d", strip.inner_text())
    assert len(numbers) == 3, strip.inner_text()  # one PSNR per press
    assert "ms a frame" in info.inner_text()
    shots(demo, "09-drive-pressed")
    before = strip.inner_text()
    demo.locator(".kitchen-reset").click()
    _wait_changed(strip.inner_text, before, "the divergence strip after reset")
    assert not re.findall(r"\d+\.\d", strip.inner_text())
    print(f"notebook 09 ran in the browser in {seconds:.0f} s")
    page.close()
