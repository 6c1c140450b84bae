"""Predict on a folder: every format and mode Pillow reads, read as displayed (16-bit, palette, grey + alpha,
CMYK, EXIF orientation), one mask and one entropy map per input file with no name collisions, unreadable files
skipped and reported, one compilation per size bucket with eval's padding, a clean stop on SIGTERM. The model
is a fixed per-pixel colour classifier, so a mis-read image gives another mask; the padding tests use one that
also sees the image mean at half resolution, so a different padding gives another mask too."""
import os
import signal
import struct
import types
import zlib

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from semeda_jax import evaluate, inference, preemption, predict
from semeda_jax.data import VOCSegmentation, pipeline
from semeda_jax.validation import InputError

MEAN, STD = (127.5,) * 3, (127.5,) * 3


def colour_classifier():
    """A state whose logits [B,H,W,4] are a fixed linear function of the normalised RGB pixel."""
    weights = jnp.asarray([[4.0, -2.0, 0.0, -3.0], [0.0, 3.0, -3.0, 1.0], [-2.0, 0.0, 4.0, 1.5]])

    def apply_fn(variables, images, train):
        return {"logits": images @ variables["params"]["w"] + variables["params"]["b"]}

    return types.SimpleNamespace(apply_fn=apply_fn, params={"w": weights, "b": jnp.asarray([0.0, 0.5, 0.2, 1.0])},
                                 batch_stats={})


def context_classifier():
    """colour_classifier's weights, logits [B,ceil(H/2),ceil(W/2),4] of every other pixel (a stride-2 network)
    plus 3 x a linear function of the image mean: every logit depends on the padding."""
    state = colour_classifier()

    def apply_fn(variables, images, train):
        w, b = variables["params"]["w"], variables["params"]["b"]
        context = jnp.mean(images, axis=(1, 2), keepdims=True) @ w[::-1]
        return {"logits": images[:, ::2, ::2] @ w + b + 3 * context}

    return types.SimpleNamespace(apply_fn=apply_fn, params=state.params, batch_stats={})


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


def run(folder, out, state=None, **kwargs):
    return predict.predict_folder(state or colour_classifier(), str(folder), str(out), mean=MEAN, std=STD,
                                  log=lambda line: None, **kwargs)


def variables_of(state):
    return {"params": state.params, "batch_stats": state.batch_stats}


def normalised(rgb):
    return (rgb.astype(np.float32) - np.float32(MEAN)) / np.float32(STD)


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


def test_every_format_pillow_reads(rng, tmp_path):
    """TIFF, WebP and upper-case suffixes are predicted; a text file and a corrupt JPEG are named as skipped;
    hidden files are left alone."""
    rgb = scene(rng)
    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(rgb).save(folder / "a.png")
    Image.fromarray(rgb).save(folder / "b.tif")
    Image.fromarray(rgb).save(folder / "c.tiff", compression="tiff_lzw")
    Image.fromarray(rgb).save(folder / "d.webp", lossless=True)
    Image.fromarray(rgb).save(folder / "E.PNG")
    Image.fromarray(rgb).save(folder / "F.TIF")
    Image.fromarray(rgb).save(folder / "G.JPG", quality=95)
    (folder / "notes.txt").write_text("shot on a phone\n")
    (folder / "corrupt.jpg").write_bytes(rng.integers(0, 256, 600, dtype=np.uint8).tobytes())
    (folder / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    written, skipped = run(folder, tmp_path / "out")
    assert sorted(os.path.basename(p) for p in written) == sorted(
        f"{n}.png" for n in ("a.png", "b.tif", "c.tiff", "d.webp", "E.PNG", "F.TIF", "G.JPG"))
    assert [os.path.basename(p) for p in skipped] == ["corrupt.jpg", "notes.txt"]
    expected = mask_of(tmp_path / "out" / "a.png.png")
    for name in ("b.tif", "c.tiff", "d.webp", "E.PNG", "F.TIF"):  # lossless: the same pixels, the same mask
        np.testing.assert_array_equal(mask_of(tmp_path / "out" / f"{name}.png"), expected, err_msg=name)
    assert mask_of(tmp_path / "out" / "G.JPG.png").shape == expected.shape


def test_bucket_size():
    assert predict.bucket_size((1, 40)) == (64, 64)
    assert predict.bucket_size((64, 65)) == (64, 128)
    assert predict.bucket_size((500, 513)) == (512, 576)
    assert predict.bucket_size((1080, 1920)) == (1152, 1920)
    assert predict.bucket_size((3024, 4032)) == (3072, 4096)
    for n in range(1, 5000):
        padded = predict.bucket_size((n, n))[0]
        assert 0 <= padded - n < max(64, n / 8), n


def test_mixed_sizes_compile_once_per_bucket(rng, tmp_path):
    """10 images of 10 sizes: the inference is traced (compiled) once per distinct bucket, and every mask has
    its image's size."""
    sizes = [(20, 30), (33, 41), (50, 64), (64, 20), (70, 90), (100, 65), (120, 128), (129, 40), (140, 150),
             (200, 190)]
    folder = tmp_path / "images"
    folder.mkdir()
    for i, size in enumerate(sizes):
        Image.fromarray(scene(rng, size)).save(folder / f"{i}.png")
    state = context_classifier()
    base = inference.build_predict_fn(inference.InferenceSpec(), state.apply_fn)
    traced = []

    def counting_predict_fn(variables, images, size):
        traced.append(tuple(size))  # runs once per trace, i.e. per compilation
        return base(variables, images, size)

    written, skipped = run(folder, tmp_path / "out", state, predict_fn=counting_predict_fn)
    buckets = {predict.bucket_size(size) for size in sizes}
    assert not skipped and len(traced) == len(buckets) == 5 < len(sizes)
    assert sorted(traced) == sorted(buckets)
    for i, size in enumerate(sizes):
        assert mask_of(written[i]).shape == size
        with Image.open(tmp_path / "out" / "entropy" / f"{i}.png.png") as entropy:
            assert entropy.size == size[::-1]


@pytest.mark.parametrize("input_scale", [1.0, 0.5])
def test_bucketed_path_equals_unpadded_at_bucket_size(rng, tmp_path, input_scale):
    """An image whose size is its bucket is not padded: its mask is the argmax of the inference on the image
    itself (resized by input_scale, Pillow bilinear), at the image's size."""
    rgb = scene(rng, (64, 128))
    assert predict.bucket_size(rgb.shape[:2]) == rgb.shape[:2]
    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(rgb).save(folder / "a.png")
    state = context_classifier()
    written, _ = run(folder, tmp_path / "out", state, input_scale=input_scale)
    seen = np.asarray(Image.fromarray(rgb).resize(pipeline.scaled_size((64, 128), input_scale)[::-1],
                                                  Image.BILINEAR))
    probs = inference.build_predict_fn(inference.InferenceSpec(), state.apply_fn)(
        variables_of(state), jnp.asarray(normalised(seen)[None]), (64, 128))
    assert len(np.unique(mask_of(written[0]))) > 1
    np.testing.assert_array_equal(mask_of(written[0]), np.asarray(probs[0].argmax(-1)))


def test_mask_equals_eval_prediction_at_the_bucket(synth_root, tmp_path):
    """Eval with eval_pad_size = the bucket (48x64 -> 64x64) predicts, on its valid region, the mask predict
    writes for the same file; another pad size changes the mask (so the padding is what makes them agree)."""
    reader = VOCSegmentation(synth_root, "val", 6)
    folder = tmp_path / "images"
    folder.mkdir()
    for image_id in reader.ids:
        os.link(reader.image_path(image_id), folder / os.path.basename(reader.image_path(image_id)))
    state = context_classifier()
    written, _ = run(folder, tmp_path / "out", state)
    predict_fn = inference.build_predict_fn(inference.InferenceSpec(), state.apply_fn)

    def eval_masks(pad_size):
        batch = next(pipeline.eval_dataset(reader, pad_size=pad_size, batch_size=len(reader.ids), mean=MEAN,
                                           std=STD).as_numpy_iterator())
        out = evaluate.eval_counts(variables_of(state), evaluate.step_inputs(batch, {}),
                                   predict_fn=predict_fn, num_classes=6, widths=(1,))
        return [np.asarray(out["predictions"][i, :h, :w]) for i, (h, w) in enumerate(zip(batch["height"],
                                                                                         batch["width"]))]

    assert predict.bucket_size((48, 64)) == (64, 64)
    for mask_path, eval_mask in zip(written, eval_masks((64, 64))):
        np.testing.assert_array_equal(mask_of(mask_path), eval_mask, err_msg=mask_path)
    assert any(not np.array_equal(mask_of(p), m) for p, m in zip(written, eval_masks((96, 96))))


def test_sigterm_stops_before_the_next_image(rng, tmp_path, monkeypatch):
    """SIGTERM while the second of five images is read: that image is finished, the stage stops with
    preemption.Preempted, the two masks stay; the rerun predicts the whole folder."""
    folder = tmp_path / "images"
    folder.mkdir()
    for name in "abcde":
        Image.fromarray(scene(rng)).save(folder / f"{name}.png")
    read_rgb = predict.read_rgb

    def read_then_signal(path):
        if path.endswith("b.png"):
            os.kill(os.getpid(), signal.SIGTERM)
        return read_rgb(path)

    monkeypatch.setattr(predict, "read_rgb", read_then_signal)
    handler = signal.getsignal(signal.SIGTERM)
    with pytest.raises(preemption.Preempted) as stopped:
        run(folder, tmp_path / "out")
    assert stopped.value.stage == "predict" and "after 2 of 5 files" in str(stopped.value)
    assert sorted(n for n in os.listdir(tmp_path / "out") if n != "entropy") == ["a.png.png", "b.png.png"]
    assert sorted(os.listdir(tmp_path / "out" / "entropy")) == ["a.png.png", "b.png.png"]
    assert signal.getsignal(signal.SIGTERM) == handler and not preemption.received()
    monkeypatch.setattr(predict, "read_rgb", read_rgb)
    written, _ = run(folder, tmp_path / "out")
    assert [os.path.basename(p) for p in written] == [f"{n}.png.png" for n in "abcde"]
