import pytest
import torch
from PIL import Image

from explore.nets.data import DataError, folder, shapes, subset, to_float, to_uint8


def test_shapes_is_deterministic_and_varied():
    a, b = shapes(16, 300, seed=3), shapes(16, 300, seed=3)
    assert torch.equal(a.images, b.images) and a.images.shape == (300, 3, 16, 16)
    assert not torch.equal(a.images, shapes(16, 300, seed=4).images)
    assert a.images.float().std() > 30  # not a blank canvas
    assert a.name != shapes(16, 300, seed=4).name


def _write(path, size, colour):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


def test_folder_reads_recursively_resizes_and_crops(tmp_path):
    _write(tmp_path / "a.png", (40, 20), (255, 0, 0))
    _write(tmp_path / "sub" / "deeper" / "b.jpg", (30, 60), (0, 0, 255))
    (tmp_path / "notes.txt").write_text("not an image")
    ds = folder(str(tmp_path), image_size=16, progress=False)
    assert ds.images.shape == (2, 3, 16, 16) and ds.images.dtype == torch.uint8
    assert ds.images[0, 0].float().mean() > 200  # the red one, sorted first
    first = folder(str(tmp_path), image_size=16, num_images=1, progress=False)
    assert torch.equal(first.images, ds.images[:1]) and first.name != ds.name
    with pytest.raises(DataError, match="num_images=0"):
        folder(str(tmp_path), image_size=16, num_images=0, progress=False)


def test_folder_errors_name_the_path(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        folder(str(tmp_path / "nope"), 16)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no images"):
        folder(str(tmp_path / "empty"), 16)
    bad = tmp_path / "bad" / "broken.png"
    bad.parent.mkdir()
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(DataError, match="broken.png"):
        folder(str(tmp_path / "bad"), 16, progress=False)
    with pytest.raises(DataError, match="data.root"):
        folder(None, 16)


def test_afhq_offline_points_to_folder():
    from explore.nets.data import afhq

    with pytest.raises(DataError, match="data=folder"):
        afhq(16, progress=False)


def test_float_uint8_round_trip_and_subset():
    x = torch.randint(0, 256, (5, 3, 4, 4), dtype=torch.uint8)
    assert torch.equal(to_uint8(to_float(x)), x)
    assert torch.equal(subset(x, 10, 0), x)
    assert subset(x, 3, 0).shape[0] == 3 and torch.equal(subset(x, 3, 0), subset(x, 3, 0))
