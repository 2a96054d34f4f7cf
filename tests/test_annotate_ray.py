"""``annotate --engine ray`` on a local Ray with 2 CPUs writes exactly the local engine's rows.

Starting Ray (raylet, GCS, workers) costs ~5-10 s on this machine; the test keeps the data small.
"""

from __future__ import annotations

import shutil

import pytest

from ff_keras.annotate import manifest
from ff_keras.annotate.engine_local import run_local
from ff_keras.annotate.stages import Options
from ff_keras.paths import SHIPPED_MODEL

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_ray_rows_equal_local_rows(local_ray, fairface_images, tmp_path):
    from ff_keras.annotate.engine_ray import run_ray

    photos = tmp_path / "photos"
    photos.mkdir()
    for p in fairface_images[:9]:
        shutil.copy(p, photos / p.name)
    (photos / "broken.jpg").write_bytes(b"\xff\xd8\xff not really")
    opts = Options(model=str(SHIPPED_MODEL), detector="none", part_size=3, batch_size=2)
    local = run_local([str(photos)], str(tmp_path / "local"), opts)
    stats = run_ray([str(photos)], str(tmp_path / "ray"), opts, model_actors=1)
    assert stats.parts_written == local.parts_written == 4 and stats.faces == 9 and stats.unreadable == 1
    a, b = manifest.read_output(tmp_path / "ray"), manifest.read_output(tmp_path / "local")
    assert a.schema.equals(b.schema, check_metadata=True)
    assert a.equals(b)
    # A second Ray run over the finished folder keeps every part (resume is shared with local).
    again = run_ray([str(photos)], str(tmp_path / "ray"), opts)
    assert again.parts_written == 0 and again.parts_skipped == 4
