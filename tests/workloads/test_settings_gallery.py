"""Settings from the environment, and the gallery's search and snapshot file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from workloads.face_compare.gallery import Gallery, GalleryFullError
from workloads.face_compare.settings import Settings


def test_settings_come_from_facecompare_and_gpuburst_env_and_flags_win() -> None:
    env = {
        "FACECOMPARE_MAX_BATCH_SIZE": "8",
        "FACECOMPARE_TENSORRT": "true",
        "GPUBURST_PLACEMENT": "burst",
        "GPUBURST_POOL": "aws-g5-spot",
        "UNRELATED": "x",
    }
    settings = Settings.from_env(env, max_queue_delay_us=100, device=None)
    assert (settings.max_batch_size, settings.tensorrt, settings.max_queue_delay_us) == (8, True, 100)
    assert (settings.placement, settings.pool, settings.device) == ("burst", "aws-g5-spot", "auto")
    assert Settings.from_env({}).placement == Settings.from_env({}).pool == "private"
    assert Settings.from_env(env, max_batch_size=4).max_batch_size == 4


@pytest.mark.parametrize(
    ("env", "field"),
    [
        ({"FACECOMPARE_MAX_BATCH_SIZ": "8"}, "max_batch_siz"),
        ({"GPUBURST_PLACEMENT": "edge"}, "placement"),
        ({"FACECOMPARE_MAX_BATCH_SIZE": "zero"}, "max_batch_size"),
        ({"FACECOMPARE_MAX_QUEUE_SIZE": "4"}, "max_images_per_request"),
    ],
)
def test_bad_settings_name_the_field(env: dict[str, str], field: str) -> None:
    with pytest.raises(ValidationError, match=field):
        Settings.from_env(env)


def _unit(seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(16).astype(np.float32)
    return v / np.linalg.norm(v)


def test_gallery_search_enrol_replace_delete() -> None:
    gallery = Gallery(16, max_size=3)
    for i in range(3):
        assert gallery.enrol(f"s{i}", _unit(i)) is True
    with pytest.raises(GalleryFullError):
        gallery.enrol("s3", _unit(3))
    assert gallery.search(_unit(1), 2)[0] == ("s1", pytest.approx(1.0, abs=1e-6))
    assert gallery.enrol("s1", _unit(9)) is False
    assert gallery.search(_unit(9), 1)[0][0] == "s1"
    assert gallery.delete("s0") and not gallery.delete("s0")
    assert sorted(s for s, _ in gallery.search(_unit(2), 10)) == ["s1", "s2"]
    assert gallery.search(_unit(2), 1)[0][0] == "s2"  # the row moved into the hole is still found


def test_gallery_snapshot_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "gallery.npz"
    first = Gallery(16, max_size=100, path=path)
    for i in range(5):
        first.enrol(f"s{i}", _unit(i))
    first.delete("s2")
    second = Gallery(16, max_size=100, path=path)
    assert len(second) == 4 and "s2" not in second
    for i in (0, 1, 3, 4):
        assert second.search(_unit(i), 1)[0][0] == f"s{i}"
    with pytest.raises(ValueError, match="expected"):
        Gallery(32, max_size=100, path=path)
