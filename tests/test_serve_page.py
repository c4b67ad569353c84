"""The page of lma3d serve in a real headless browser (Debian's chromium driven by playwright): the PIAD sample
sent in one click comes back as a 3D point cloud coloured by the heat map, beside the image, with a colour bar
and the instruction, seen along the cloud's thinnest axis, under a line naming the model that answers; a refused
request then replaces that answer with its one-line error; no request leaves the server. Both screenshots are
kept (LMA3D_TEST_ARTIFACTS, default work/test-artifacts/)."""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from registered import INSTRUCTION, export_tiny
from serve_process import start_serving

ROOT = Path(__file__).resolve().parents[1]
PIAD = ROOT / "tests" / "fixtures" / "piad"
# Software WebGL: the 3D plot draws on a WebGL canvas and a headless machine has no GPU.
CHROMIUM_ARGS = ["--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--no-sandbox"]


def chromium() -> tuple[str | None, str]:
    """(the chromium executable, "") or (None, why the test cannot run)."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return None, "playwright is not installed (pip install playwright; no browser download is needed)"
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found, ""
    return None, "no chromium on PATH (Debian: apt-get install -y chromium, or `make browser`)"


def artifact_dir() -> Path:
    folder = Path(os.environ.get("LMA3D_TEST_ARTIFACTS", ROOT / "work" / "test-artifacts"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.mark.slow
def test_page_shows_the_sample_heat_map_as_a_3d_point_cloud(tmp_path: Path) -> None:
    executable, why = chromium()
    if executable is None:
        pytest.skip(why)
    from PIL import Image
    from playwright.sync_api import sync_playwright

    server = start_serving(["--model", str(export_tiny(tmp_path / "model", seed=3)), "serve.replica_cpus=0"], tmp_path)
    outside: list[str] = []
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1200, "height": 800})
            page.on("request", lambda r: outside.append(r.url) if not r.url.startswith((server.url, "blob:", "data:"))
                    else None)  # fmt: skip
            page.goto(server.url + "/")
            page.click("#sample")
            page.wait_for_selector("body[data-state=plotted]", timeout=120_000)
            page.wait_for_timeout(500)  # let WebGL finish the frame
            shown_instruction = page.inner_text("#instruction-shown")
            image_width = page.evaluate("document.getElementById('image').naturalWidth")
            colorbars = page.locator("#plot .colorbar").count()
            plot_png = page.locator("#plot").screenshot()
            eye = page.evaluate("document.getElementById('plot').layout.scene.camera.eye")
            note = page.inner_text("#note")
            screenshot = tmp_path / "serve_page.png"
            page.screenshot(path=str(screenshot), full_page=True)
            # Then a request the server refuses: the error replaces the answer, in one line, no Python repr.
            page.set_input_files("#image-file", files=[{"name": "broken.jpg", "mimeType": "image/jpeg",
                                                         "buffer": b"not an image at all"}])  # fmt: skip
            page.set_input_files("#points-file", str(PIAD / "Point_Test_Bag_1.txt"))
            page.fill("#instruction", "Lift the bag.")
            page.click("#predict")
            page.wait_for_selector("body[data-state=error]", timeout=60_000)
            error_line = page.inner_text("#status")
            left = {"image_hidden": page.evaluate("document.getElementById('image').hidden"),
                    "plots": page.locator("#plot .main-svg").count(), "model": page.inner_text("#model")}  # fmt: skip
            error_shot = tmp_path / "serve_page_error.png"
            page.screenshot(path=str(error_shot), full_page=True)
            browser.close()
    finally:
        server.stop()
    for shot in (screenshot, error_shot):
        shutil.copy(shot, artifact_dir() / shot.name)
    print(f"\nscreenshots of the page: {artifact_dir() / screenshot.name}, {artifact_dir() / error_shot.name}")
    assert error_line.startswith("error: ") and "\n" not in error_line and "0x" not in error_line, error_line
    assert "image" in error_line and left == {"image_hidden": True, "plots": 0, "model": ""}
    assert note == "Answering: the exported model “model”."  # the folder's name; no demo note for it
    xyz = np.loadtxt(PIAD / "Point_Test_Bag_1.txt", usecols=(2, 3, 4))
    thinnest = int(np.argmin(xyz.max(0) - xyz.min(0)))  # the first view looks along the cloud's thinnest axis
    assert max(range(3), key=lambda i: eye["xyz"[i]]) == thinnest

    assert not outside, f"the page fetched from outside the server: {outside[:3]}"
    assert INSTRUCTION in shown_instruction and image_width == 408  # the PIAD image is 408 x 612
    assert colorbars == 1
    # The point cloud is drawn: many pixels in the heat map's grey->red range (red high, green and blue equal and
    # lower), and not one flat colour.
    pixels = np.asarray(Image.open(io.BytesIO(plot_png)).convert("RGB")).astype(int)
    r, g, b = pixels[..., 0], pixels[..., 1], pixels[..., 2]
    heat = (r >= 185) & (r - g >= 20) & (np.abs(g - b) <= 12)
    assert heat.sum() > 500, f"only {heat.sum()} heat-coloured pixels in the plot"
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50
