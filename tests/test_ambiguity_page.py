"""The demo page shows "ambiguous: X or Y" for a face whose top probability is under the model's
threshold, and nothing for a confident one (headless Chromium, real server, real faces)."""

from __future__ import annotations

import numpy as np
from test_ambiguity import adjusted  # noqa: F401 - the module fixture: a real ONNX with thresholds
from test_demo_page import By, _upload, browser  # noqa: F401 - skips without selenium, as that module does

from studies.loadtest import running_server


def test_page_shows_ambiguous_with_runner_up(adjusted, browser, tmp_path):  # noqa: F811
    import httpx

    model, paths, _, ambiguous_race = adjusted
    face, confident = paths[int(np.argmax(ambiguous_race))], paths[int(np.argmin(ambiguous_race))]
    with running_server(model, log_path=tmp_path / "serve.log") as url:
        race = httpx.post(f"{url}/predict", files={"file": (face.name, face.read_bytes(), "image/jpeg")}
                          ).json()["faces"][0]["heads"]["race"]
        for path, shown in ((face, True), (confident, False)):
            assert _upload(browser, url, path) == "done", browser.find_element(By.ID, "status").text
            text = [e.text for e in browser.find_elements(By.CSS_SELECTOR, ".ambiguous[data-head='race']")]
            assert text == ([f"ambiguous: {race['label']} or {race['runner_up']['label']}"] if shown else [])
