"""Predict on a folder: every image mode read as displayed (16-bit, palette, grey + alpha, CMYK, EXIF
orientation), one mask and one entropy map per input file with no name collisions, unreadable files skipped
and reported. The model is a fixed per-pixel colour classifier, so a mis-read image gives another mask."""
import os
import struct
import types
import zlib

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from semeda_jax import predict
from semeda_jax.validation import InputError

MEAN, STD = (127.5,) * 3, (127.5,) * 3


def colour_classifier():
    """A state whose logits [B,H,W,4] are a fixed linear function of the normalised RGB pixel."""
    weights = jnp.asarray([[4.0, -2.0, 0.0, -3.0], [0.0, 3.0, -3.0, 1.0], [-2.0, 0.0, 4.0, 1.5]])

    def apply_fn(variables, images, train):
        return {"logits": images @ variables["params"]["w"] + variables["params"]["b"]}

    return types.SimpleNamespace(apply_fn=apply_fn, params={"w": weights, "b": jnp.asarray([0.0, 0.5, 0.2, 1.0])},
                                 batch_stats={})


def scene(rng, size=(12, 17)):
    """An RGB uint8 image of 4 flat colour blocks (few colours: exact in a palette) plus grey ramps."""
    image = np.zeros((*size, 3), np.uint8)
    colours = rng.integers(0, 256, (4, 3))
    image[:, :size[1] // 2], image[:, size[1] // 2:] = colours[0], colours[1]
    image[size[0] // 2:, :size[1] // 3] = colours[2]
    image[size[0] // 2:, -size[1] // 4:] = colours[3]
    return image


def write_png16(path, rgb16: np.ndarray):
    """A 16-bit-per-channel PNG (colour type 2 for [H,W,3], 0 for [H,W]) written by hand (zlib + struct)."""
    height, width = rgb16.shape[:2]
    colour_type = 2 if rgb16.ndim == 3 else 0
    raw = b"".join(b"\0" + row.astype(">u2").tobytes() for row in rgb16)

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def run(folder, out, **kwargs):
    return predict.predict_folder(colour_classifier(), str(folder), str(out), mean=MEAN, std=STD,
                                  log=lambda line: None, **kwargs)


def mask_of(path):
    with Image.open(path) as mask:
        return np.asarray(mask)


def test_every_mode_is_read_as_displayed(rng, tmp_path):
    rgb = scene(rng)
    grey = np.asarray(Image.fromarray(rgb).convert("L"))
    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(rgb).save(folder / "rgb.png")
    write_png16(folder / "rgb48.png", rgb.astype(np.uint16) * 257)
    Image.fromarray(rgb).quantize(colors=8, method=Image.Quantize.MAXCOVERAGE).save(folder / "palette.png")
    Image.fromarray(grey).save(folder / "grey.png")
    Image.fromarray((grey.astype(np.uint16) * 257)).save(folder / "grey16.png")
    write_png16(folder / "grey16_by_hand.png", grey.astype(np.uint16) * 257)
    Image.fromarray(np.dstack([grey, np.full_like(grey, 40)]), "LA").save(folder / "grey_alpha.png")
    Image.fromarray(np.dstack([rgb, np.full_like(grey, 0)]), "RGBA").save(folder / "transparent.png")
    rotated = Image.fromarray(np.ascontiguousarray(np.rot90(rgb, 1)))  # stored rotated, EXIF says rotate back
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: display rotated 90 degrees clockwise
    rotated.save(folder / "exif.png", exif=exif)
    with Image.open(folder / "palette.png") as image:
        assert image.mode == "P"
        palette_rgb = np.asarray(image.convert("RGB"))
    with Image.open(folder / "grey16.png") as image:
        assert image.mode.startswith("I;16")
    written, skipped = run(folder, tmp_path / "out")
    assert not skipped and len(written) == 9
    out = tmp_path / "out"
    expected_rgb = mask_of(out / "rgb.png.png")
    assert len(np.unique(expected_rgb)) > 1  # the classifier tells the blocks apart
    np.testing.assert_array_equal(mask_of(out / "rgb48.png.png"), expected_rgb)
    np.testing.assert_array_equal(mask_of(out / "transparent.png.png"), expected_rgb)
    np.testing.assert_array_equal(mask_of(out / "exif.png.png"), expected_rgb)
    for name in ("grey16.png", "grey16_by_hand.png", "grey_alpha.png"):
        np.testing.assert_array_equal(mask_of(out / f"{name}.png"), mask_of(out / "grey.png.png"), err_msg=name)
    np.testing.assert_array_equal(predict.read_rgb(str(folder / "palette.png")), palette_rgb)
    np.testing.assert_array_equal(predict.read_rgb(str(folder / "grey16.png")), np.dstack([grey] * 3))


def test_cmyk_and_32_bit_modes(rng, tmp_path):
    rgb = scene(rng)
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=100)
    with Image.open(tmp_path / "cmyk.jpg") as image:
        assert image.mode == "CMYK"
        expected = np.asarray(image.convert("RGB"))
    np.testing.assert_array_equal(predict.read_rgb(str(tmp_path / "cmyk.jpg")), expected)
    assert np.abs(expected.astype(int) - rgb).mean() < 8
    for mode, array in (("I", np.full((4, 5), 70000, np.int32)), ("F", np.full((4, 5), 0.5, np.float32))):
        with pytest.raises(InputError, match=f"deep.png: '{mode}' images .* no fixed range"):
            predict.to_rgb8(Image.fromarray(array, mode), "deep.png")


def test_output_names_never_collide(rng, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    names = ["a.jpg", "a.png", "x.png", "x_entropy.png", "x.png.png", "entropy.png"]
    for i, name in enumerate(names):
        Image.fromarray(scene(np.random.default_rng(i))).save(folder / name)
    lines = []
    written, skipped = predict.predict_folder(colour_classifier(), str(folder), str(tmp_path / "out"), mean=MEAN,
                                              std=STD, log=lines.append)
    assert not skipped and len(written) == len(set(written)) == len(names)
    masks = sorted(n for n in os.listdir(tmp_path / "out") if n != "entropy")
    assert masks == sorted(f"{n}.png" for n in names)
    assert sorted(os.listdir(tmp_path / "out" / "entropy")) == masks
    for name in names:  # each mask is its own input's
        expected = run_single(folder / name, tmp_path / f"single_{name}")
        np.testing.assert_array_equal(mask_of(tmp_path / "out" / f"{name}.png"), expected)
    assert lines[-1].startswith(f"[predict] {len(names)} masks written")


def run_single(path, folder):
    folder.mkdir()
    os.link(path, folder / path.name)
    written, _ = run(folder, folder / "out")
    return mask_of(written[0])


def test_unreadable_files_are_skipped_and_reported(rng, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for name in ("a.png", "c.jpg"):
        Image.fromarray(scene(rng)).save(folder / name)
    (folder / "b.jpg").write_bytes((folder / "c.jpg").read_bytes()[:200])  # truncated
    (folder / "empty.png").write_bytes(b"")
    (folder / "text.png").write_text("not an image")
    lines = []
    written, skipped = predict.predict_folder(colour_classifier(), str(folder), str(tmp_path / "out"), mean=MEAN,
                                              std=STD, log=lines.append)
    assert [os.path.basename(p) for p in written] == ["a.png.png", "c.jpg.png"]
    assert [os.path.basename(p) for p in skipped] == ["b.jpg", "empty.png", "text.png"]
    warnings = [line for line in lines if "warning" in line]
    assert len(warnings) == 3 and all(str(folder) in w for w in warnings)
    assert "b.jpg" in warnings[0] and "2 masks written" in lines[-1] and "3 unreadable" in lines[-1]
