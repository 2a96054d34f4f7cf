"""The demo page in headless Chromium: upload a real face, read the rendered labels, screenshot."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import httpx
from PIL import Image
import pytest

from ff_keras import labels
from studies.loadtest import running_server

selenium = pytest.importorskip("selenium")
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


@pytest.fixture(scope="module")
def server(tiny_onnx):
    with running_server(tiny_onnx) as url:
        yield url


@pytest.fixture()
def browser(tmp_path):
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.fail("headless test needs Debian's chromium and chromium-driver "
                    "(apt-get install chromium chromium-driver)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1000,900"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def _upload(browser, url: str, path) -> str:
    browser.get(url)
    browser.find_element(By.ID, "file").send_keys(str(path))
    browser.find_element(By.ID, "submit").click()
    WebDriverWait(browser, 30).until(
        lambda d: d.find_element(By.ID, "status").get_attribute("data-state") in ("done", "error")
    )
    return browser.find_element(By.ID, "status").get_attribute("data-state")


def test_upload_shows_labels_and_box(server, browser, data_root, tmp_path):
    face = data_root / "fairface" / "val" / "1.jpg"
    assert _upload(browser, server, face) == "done", browser.find_element(By.ID, "status").text
    rendered = {el.get_attribute("data-head"): el.text for el in browser.find_elements(By.CSS_SELECTOR, ".label")}
    api = httpx.post(f"{server}/predict", files={"file": ("1.jpg", face.read_bytes(), "image/jpeg")}).json()
    expected = {h: p["label"] for h, p in api["faces"][0]["heads"].items()}
    assert rendered == expected
    assert all(rendered[h] in labels.HEAD_CLASSES[h] for h in labels.CONTRACT_HEADS)
    size = browser.execute_script("const c = document.getElementById('canvas'); return [c.width, c.height];")
    assert size == [224, 224]  # the photo was drawn, with its box
    shot = tmp_path / "demo_page.png"
    assert browser.save_screenshot(str(shot))
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
    if os.environ.get("FF_SCREENSHOT_DIR"):  # keep it for CI artifacts / the README
        shutil.copy(shot, Path(os.environ["FF_SCREENSHOT_DIR"]) / shot.name)


def test_tight_crop_shows_the_framing_warning(server, browser, data_root, tmp_path):
    from ff_keras.evaluation.robustness import CROP_VARIANTS, apply_variant

    tight = tmp_path / "tight.jpg"
    chip = Image.open(data_root / "fairface" / "val" / "1.jpg").convert("RGB")
    apply_variant(chip, CROP_VARIANTS["central_60"]).save(tight, quality=95)
    assert _upload(browser, server, tight) == "done", browser.find_element(By.ID, "status").text
    (warning,) = browser.find_elements(By.CSS_SELECTOR, ".framing")
    assert warning.get_attribute("data-status") == "tighter" and "detect=true" in warning.text
    assert _upload(browser, server, data_root / "fairface" / "val" / "1.jpg") == "done"
    assert browser.find_elements(By.CSS_SELECTOR, ".framing") == []  # a FairFace-like crop: no warning


def test_bad_upload_shows_server_error(server, browser, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image")
    assert _upload(browser, server, notes) == "error"
    status = browser.find_element(By.ID, "status").text
    assert "notes.txt" in status and "not a JPEG, PNG or WebP" in status
    assert browser.find_elements(By.CSS_SELECTOR, ".face") == []
