"""decode_image's SPEC §14 working copy: the whole frame at ≤ 256 px, from the same decode as the model input."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from ood_audit.errors import ConfigError
from ood_audit.io.decode import Preprocess, decode_file, decode_image, draft_request
from ood_audit.io.quality import working_factor, working_image

from tests.io.test_decode import encode, noise  # noise(h, w)




@pytest.mark.parametrize(("w", "h", "shape"), [
    (600, 400, (134, 200, 3)),    # factor ceil(600/256) = 3; Pillow's reduce keeps the partial last row
    (256, 100, (100, 256, 3)),    # longer side exactly 256: used as it is
    (257, 10, (5, 129, 3)),       # one pixel over: factor 2
    (3000, 100, (9, 250, 3)),     # factor 12
    (20, 30, (30, 20, 3)),        # small images are not enlarged
])
def test_working_copy_size_follows_the_rule(w: int, h: int, shape: tuple[int, int, int]) -> None:
    r = decode_image(encode(noise(h, w), "PNG"), size=32, working_size=256)
    assert r.ok and r.array is not None and r.array.shape == (32, 32, 3)
    assert r.working is not None and r.working.dtype == np.uint8 and r.working.shape == shape
    assert max(shape[:2]) <= 256
    assert working_factor(w, h, 256) == -(-max(w, h) // 256)


def test_working_copy_is_the_quality_rule_applied_to_the_full_frame() -> None:
    data = encode(noise(300, 700), "PNG")  # lossless: no draft, so the copy is exactly the rule's
    full = decode_image(data).array
    assert full is not None and full.shape == (300, 700, 3)
    got = decode_image(data, size=Preprocess(32), working_size=256).working
    assert got is not None and np.array_equal(got, working_image(full, 256))
    assert np.array_equal(decode_image(data, working_size=100).working, working_image(full, 100))


def test_working_copy_keeps_the_borders_the_model_crop_drops() -> None:
    a = np.zeros((300, 400, 3), np.uint8)
    a[:, :] = (0, 200, 0)
    a[:, :40] = a[:, -40:] = (255, 0, 0)  # red side bars; the 300×300 centre crop starts at x = 50
    r = decode_image(encode(Image.fromarray(a), "PNG"), size=224, working_size=256)
    assert r.array is not None and r.working is not None
    red = lambda x: (x[..., 0] > 200) & (x[..., 1] < 60)  # noqa: E731
    assert not red(r.array).any()                         # cropped out of the model input
    assert r.working.shape == (150, 200, 3)
    assert red(r.working[:, :19]).all() and red(r.working[:, -19:]).all()
    assert not red(r.working[:, 21:-21]).any()


def test_exif_rotation_applies_to_the_working_copy() -> None:
    im = Image.new("RGB", (400, 200), (255, 0, 0))
    im.paste((0, 0, 255), (0, 0, 200, 200))  # left half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise for display: the left half ends on top
    r = decode_image(encode(im, "JPEG", exif=exif.tobytes(), quality=100), size=32, working_size=256)
    assert (r.width, r.height) == (400, 200)   # as stored
    w = r.working
    assert w is not None and w.shape == (200, 100, 3)   # displayed portrait, factor 2
    assert w[10:90, 50, 2].min() > 200 and w[110:190, 50, 0].min() > 200  # blue on top, red below


def test_without_working_size_nothing_changes() -> None:
    data = encode(noise(480, 640), "JPEG", quality=90)
    for pre in (Preprocess(32), Preprocess(224), Preprocess(224, resize_shorter=256), Preprocess((24, 40)),
                Preprocess(32, mode="resize"), Preprocess(32, jpeg_draft=False), Preprocess(32, jpeg_draft_longer=0)):
        plain = decode_image(data, size=pre)
        both = decode_image(data, size=pre, working_size=256)
        assert plain.working is None and both.working is not None
        assert np.array_equal(plain.array, both.array), pre  # the model input never depends on the copy
    for bad in (b"", b"not an image at all", data[:300]):
        assert decode_image(bad, size=32, working_size=256).working is None
    with pytest.raises(ConfigError):
        decode_image(data, size=32, working_size=0)


def test_draft_keeps_the_longer_side_at_the_working_size() -> None:
    assert draft_request((600, 400), Preprocess(32)) == (256, 32)
    assert draft_request((400, 600), Preprocess(32)) == (32, 256)
    assert draft_request((600, 400), Preprocess(224)) == (256, 224)
    assert draft_request((600, 400), Preprocess(224, resize_shorter=300)) == (300, 300)
    assert draft_request((600, 400), Preprocess(32, jpeg_draft_longer=0)) == (32, 32)  # the model size alone
    assert draft_request((600, 400), Preprocess(32, jpeg_draft=False)) is None
    assert draft_request((600, 400), Preprocess(None)) is None
    data = encode(noise(480, 640), "JPEG", quality=90)
    # 32 px model: libjpeg drafts 640×480 to 320×240 (longer ≥ 256), so the copy is 160×120 ...
    assert decode_image(data, size=Preprocess(32), working_size=256).working.shape == (120, 160, 3)
    # ... where the model size alone would draft to 1/8 and leave an 80×60 copy.
    legacy = decode_image(data, size=Preprocess(32, jpeg_draft_longer=0), working_size=256)
    assert legacy.working.shape == (60, 80, 3)
    assert not np.array_equal(legacy.array, decode_image(data, size=Preprocess(32)).array)  # a real change


def test_bundles_written_before_the_field_decode_as_they_were_calibrated() -> None:
    old = {"size": [32, 32], "mode": "crop", "resize_shorter": None, "jpeg_draft": True}
    assert Preprocess.from_dict(old).jpeg_draft_longer == 0
    assert Preprocess.from_dict(Preprocess(32).to_dict()) == Preprocess((32, 32))
    assert Preprocess(32).to_dict()["jpeg_draft_longer"] == 256
    with pytest.raises(ConfigError, match="jpeg_draft_longer"):
        Preprocess(32, jpeg_draft_longer=-1)


def test_decode_file_passes_the_working_size(tmp_path) -> None:
    path = tmp_path / "a.png"
    path.write_bytes(encode(noise(400, 600), "PNG"))
    assert decode_file(str(path), size=32, working_size=256).working.shape == (134, 200, 3)
    assert decode_file(str(path), size=32).working is None
