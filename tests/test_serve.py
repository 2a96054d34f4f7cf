"""The HTTP service, run for real: uvicorn on 127.0.0.1 serving a tiny exported ONNX model."""

from __future__ import annotations

import asyncio
import io

import httpx
import numpy as np
import pytest
from PIL import Image

from ff_keras import labels
from studies.loadtest import load_test, running_server

HEADS = list(labels.CONTRACT_HEADS)
SERVER_ARGS = ["--max-upload-mb", "0.5", "--max-request-mb", "2", "--max-pixels", "4000000", "--max-batch", "8",
               "--max-wait-ms", "50", "--detector", "none"]


@pytest.fixture(scope="module")
def model(tiny_onnx):
    return tiny_onnx


@pytest.fixture(scope="module")
def server(model, tmp_path_factory):
    log = tmp_path_factory.mktemp("logs") / "serve.log"
    with running_server(model, SERVER_ARGS, log_path=log) as url:
        yield url


def _encode(image: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    return buf.getvalue()


def _check_prediction(body: dict, width: int, height: int) -> None:
    assert body["width"] == width and body["height"] == height and body["detector"] == "none"
    (face,) = body["faces"]
    assert face["box"] == [0, 0, width, height]
    assert face["framing"] is None  # detector "none": nothing to check the framing with
    assert sorted(face["heads"]) == sorted(HEADS)
    assert isinstance(face["age_years"], float)  # the tiny model has the age_years head
    for head, pred in face["heads"].items():
        assert list(pred["probabilities"]) == list(labels.HEAD_CLASSES[head])
        assert pred["label"] == max(pred["probabilities"], key=pred["probabilities"].get)
        assert sum(pred["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)


def test_real_face_gets_labels(server, face):
    r = httpx.post(f"{server}/predict", files={"file": ("1.jpg", face, "image/jpeg")})
    assert r.status_code == 200, r.text
    assert r.json()["filename"] == "1.jpg"
    _check_prediction(r.json(), 224, 224)
    # detect=true with detector "none": the whole image is still one face.
    r = httpx.post(f"{server}/predict?detect=true", files={"file": ("1.jpg", face, "image/jpeg")})
    assert r.status_code == 200 and r.json()["detector"] == "none"


def _bad_inputs(face: bytes) -> dict[str, tuple[tuple, int, str]]:
    rng = np.random.default_rng(0)
    noise = Image.fromarray(rng.integers(0, 256, (1000, 1000, 3), dtype=np.uint8))
    return {
        "not_an_image": (("notes.txt", b"hello, not an image", "text/plain"), 415, "not a JPEG, PNG or WebP"),
        "oversize": (("big.jpg", _encode(noise, "JPEG", quality=95), "image/jpeg"), 413, "upload limit"),
        "empty": (("empty.jpg", b"", "image/jpeg"), 400, "empty file"),
        "corrupt": (("corrupt.jpg", b"\xff\xd8\xff" + rng.bytes(4096), "image/jpeg"), 422, "corrupt"),
        "truncated": (("cut.jpg", face[: len(face) // 2], "image/jpeg"), 422, "truncated"),
        "decompression_bomb": (("bomb.png", _encode(Image.new("RGB", (2500, 2000)), "PNG"), "image/png"), 413,
                               "pixels"),
    }


@pytest.mark.parametrize("case", list(_bad_inputs(b"x" * 10)))
def test_bad_input_gets_clear_4xx_and_server_keeps_serving(server, face, case):
    upload, status, message = _bad_inputs(face)[case]
    r = httpx.post(f"{server}/predict", files={"file": upload})
    assert r.status_code == status, r.text
    detail = r.json()["detail"]
    assert upload[0] in detail and message in detail, detail
    assert httpx.get(f"{server}/health").json()["status"] == "ok"
    assert httpx.post(f"{server}/predict", files={"file": ("1.jpg", face, "image/jpeg")}).status_code == 200


def test_oversized_body_is_refused_before_parsing(server):
    r = httpx.post(f"{server}/predict", files={"file": ("huge.jpg", b"\0" * (9 * 2**20), "image/jpeg")})
    assert r.status_code == 413 and "exceeds the 2097152-byte limit" in r.json()["detail"]
    assert httpx.get(f"{server}/health").status_code == 200


def test_batch_endpoint(server, face, data_root):
    png = _encode(Image.open(data_root / "fairface" / "val" / "2.jpg"), "PNG")
    files = [("files", ("1.jpg", face, "image/jpeg")), ("files", ("2.png", png, "image/png")),
             ("files", ("3.jpg", face, "image/jpeg"))]
    r = httpx.post(f"{server}/predict/batch", files=files)
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["filename"] for x in results] == ["1.jpg", "2.png", "3.jpg"]
    for x in results:
        _check_prediction(x, 224, 224)
    assert results[0]["faces"][0]["heads"] == results[2]["faces"][0]["heads"]
    # A broken file gets an error entry in its place; the other files are still answered.
    bad = files[:1] + [("files", ("broken.jpg", b"\xff\xd8\xffgarbage", "image/jpeg"))] + files[1:2]
    r = httpx.post(f"{server}/predict/batch", files=bad)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["errors"] == 1 and [x["filename"] for x in body["results"]] == ["1.jpg", "broken.jpg", "2.png"]
    assert body["results"][1]["status"] == 422 and "broken.jpg" in body["results"][1]["detail"]
    _check_prediction(body["results"][0], 224, 224)
    _check_prediction(body["results"][2], 224, 224)
    r = httpx.post(f"{server}/predict/batch", files=files[:1] * 17)
    assert r.status_code == 413 and "at most 16" in r.json()["detail"]


async def _burst(url: str, payload: bytes, n: int) -> list[int]:
    async with httpx.AsyncClient(timeout=60) as http:
        rs = await asyncio.gather(*[
            http.post(f"{url}/predict", files={"file": ("f.jpg", payload, "image/jpeg")}) for _ in range(n)
        ])
    return [r.status_code for r in rs]


def _histogram(url: str) -> dict[int, int]:
    return {int(k): v for k, v in httpx.get(f"{url}/metadata").json()["batching"]["batch_size_histogram"].items()}


def test_concurrent_burst_is_micro_batched(server, face):
    before = _histogram(server)
    assert asyncio.run(_burst(server, face, 24)) == [200] * 24
    after = _histogram(server)
    new = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    assert sum(k * v for k, v in new.items()) == 24
    assert any(k > 1 and v > 0 for k, v in new.items()), new
    assert max(after) <= 8  # --max-batch


def test_load_generator_counts_successes_and_errors(server, face):
    good = asyncio.run(load_test(server, face, clients=3, requests_per_client=4))
    assert (good["ok"], good["errors"], good["requests"]) == (12, 0, 12)
    assert good["req_per_s"] > 0 and good["p99_ms"] >= good["p50_ms"] > 0
    assert good["batching_one_worker"]["enabled"]
    bad = asyncio.run(load_test(server, b"not an image", clients=2, requests_per_client=3))
    assert bad["ok"] == 0 and bad["errors"] == 6 and "HTTP 415" in bad["error_examples"][0]


def test_health_metadata_and_docs(server):
    health = httpx.get(f"{server}/health").json()
    assert health["status"] == "ok" and health["backend"] == "onnx" and health["batching"]["enabled"]
    assert health["heads"] == HEADS and health["regression_heads"] == ["age_years"]
    meta = httpx.get(f"{server}/metadata").json()
    assert meta["heads"] == HEADS and meta["image_size"] == 32 and meta["regression_heads"] == ["age_years"]
    assert meta["limits"]["content_types"] == ["image/jpeg", "image/png", "image/webp"]
    assert meta["classes"]["race"] == list(labels.RACES)
    assert meta["limits"]["max_upload_bytes"] == int(0.5 * 2**20) and meta["limits"]["max_pixels"] == 4_000_000
    assert httpx.get(f"{server}/docs").status_code == 200
    paths = httpx.get(f"{server}/openapi.json").json()["paths"]
    assert {"/predict", "/predict/batch", "/health", "/metadata"} <= set(paths)


def test_two_workers_without_batching(model, face, tmp_path):
    args = ["--workers", "2", "--no-batching", "--detector", "none"]
    with running_server(model, args, log_path=tmp_path / "serve.log") as url:
        assert asyncio.run(_burst(url, face, 12)) == [200] * 12
        # Fresh connections are spread over the worker processes, each with its own session.
        pids = {httpx.get(f"{url}/health", headers={"Connection": "close"}).json()["pid"] for _ in range(40)}
        health = httpx.get(f"{url}/health").json()
        assert not health["batching"]["enabled"]
        assert set(_histogram(url)) <= {1}
        assert len(pids) == 2


def test_detect_finds_each_face_with_its_box(model, data_root, tmp_path):
    """``--detector`` wires ff_keras.faces into ``/predict?detect=true``: one entry per face."""
    canvas = Image.new("RGB", (500, 260), "white")
    canvas.paste(Image.open(data_root / "fairface" / "val" / "1.jpg"), (10, 10))
    canvas.paste(Image.open(data_root / "fairface" / "val" / "5.jpg"), (260, 20))
    photo = _encode(canvas, "JPEG", quality=95)
    # "dlib" is the CLI's spelling of dlib's HOG detector; the service takes the same names.
    with running_server(model, ["--detector", "dlib"], log_path=tmp_path / "serve.log") as url:
        body = httpx.post(f"{url}/predict?detect=true", files={"file": ("two.jpg", photo, "image/jpeg")}).json()
        plain = httpx.post(f"{url}/predict", files={"file": ("two.jpg", photo, "image/jpeg")}).json()
        assert httpx.get(f"{url}/health").json()["detector"] == "dlib_hog"
    assert body["detector"] == "dlib_hog"
    boxes = sorted(f["box"] for f in body["faces"])
    assert len(boxes) == 2
    assert boxes[0][0] < 250 <= boxes[1][0]  # one face in each half, [x, y, w, h]
    assert all(f["confidence"] is not None and sorted(f["heads"]) == sorted(HEADS) for f in body["faces"])
    assert plain["detector"] == "none" and plain["faces"][0]["box"] == [0, 0, 500, 260]
    # ... and a photo sent without detect is classified as one face, with the framing check saying so.
    assert plain["faces"][0]["framing"]["status"] == "several_faces"
    assert body["faces"][0]["framing"] is None  # the service cut these chips itself


def test_framing_check_flags_crops_tighter_than_measured(model, data_root, tmp_path):
    from ff_keras.evaluation.robustness import CROP_VARIANTS, apply_variant

    chip = Image.open(data_root / "fairface" / "val" / "1.jpg").convert("RGB")
    tight = _encode(apply_variant(chip, CROP_VARIANTS["central_60"]), "JPEG", quality=95)
    standard = _encode(chip, "JPEG", quality=95)
    files = [("files", ("tight.jpg", tight, "image/jpeg")), ("files", ("standard.jpg", standard, "image/jpeg"))]
    with running_server(model, ["--detector", "dlib"], log_path=tmp_path / "serve.log") as url:
        batch = httpx.post(f"{url}/predict/batch", files=files).json()["results"]
        unchecked = httpx.post(f"{url}/predict?check_framing=false", files={"file": ("tight.jpg", tight)}).json()
        schema = httpx.get(f"{url}/openapi.json").json()
        metadata = httpx.get(f"{url}/metadata").json()
    tight_face, standard_face = (r["faces"][0] for r in batch)
    assert tight_face["framing"]["status"] == "tighter" and tight_face["framing"]["scale"] < 0.75
    assert "detect=true" in tight_face["framing"]["message"]
    assert standard_face["framing"]["status"] == "ok"
    assert unchecked["faces"][0]["framing"] is None
    assert "check_framing" in str(schema["paths"]["/predict"]) and "Framing" in schema["components"]["schemas"]
    with running_server(model, ["--detector", "dlib", "--no-framing-check"], log_path=tmp_path / "off.log") as url:
        off = httpx.post(f"{url}/predict", files={"file": ("tight.jpg", tight)}).json()
        off_metadata = httpx.get(f"{url}/metadata").json()
    assert off["faces"][0]["framing"] is None
    assert metadata["framing_check"] is True and metadata["framing_ok_scale"] == [0.82, 1.8]
    assert off_metadata["framing_check"] is False
