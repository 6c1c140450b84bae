"""The export stage on the smoke model (freshly initialised, saved as a checkpoint): the jax.export artifact
reloaded in a process that cannot import semeda_jax, and the SavedModel in one that cannot import semeda_jax or
jax, give the jitted eval-time inference's probabilities at batch 1 and 3 (symbolic batch); whole image, and
sliding windows x flips fused by max with the guided CRF at input scale 0.75."""
import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
import tensorflow as tf

from fake_datasets import smoke_config
from fresh_checkpoint import save_fresh_checkpoint
from configs import common
from semeda_jax import export, inference, stages
from semeda_jax.data import pipeline
from semeda_jax.validation import ConfigError

pytestmark = pytest.mark.usefixtures("float32_jax")

CONFIGS = {
    "whole": {},
    "sliding_flip_crf": {"eval.inference.mode": "sliding", "eval.inference.window": (24, 24),
                         "eval.inference.stride": (16, 16), "eval.inference.flip": True, "eval.inference.fusion": "max",
                         "eval.inference.postprocess": "guided_crf", "eval.crf.iterations": 2,
                         "data.input_scale": 0.75},
}
TOLERANCE = 1e-5  # float32 probabilities; measured differences are ~1e-7
# Run first in the child: any import of these top-level packages fails.
BLOCK = """
import sys
class Blocked:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {names!r}:
            raise ImportError(name + " must not be imported here")
sys.meta_path.insert(0, Blocked())
"""


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("synthetic"))


def run_blocked(script: str, blocked: set, cwd: str) -> None:
    """`script` in a fresh Python process (CPU) in which importing any of `blocked` fails."""
    code = BLOCK.format(names=sorted(blocked)) + textwrap.dedent(script)
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop("PYTHONPATH", None)
    result = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr


def eval_input(rgb: np.ndarray, config) -> np.ndarray:
    """uint8 RGB [B,h,w,3] -> the eval pipeline's network input [B,SH,SW,3] (resized by input_scale,
    antialiased; normalised; padded with 0), written out step by step as a reference."""
    _, (sh, sw) = export.sizes(config)
    pixels = tf.cast(rgb, tf.float32)
    if config.data.input_scale != 1.0:
        size = pipeline.scaled_size(rgb.shape[1:3], config.data.input_scale)
        pixels = tf.image.resize(pixels, size, method="bilinear", antialias=True)
    pixels = (pixels.numpy() - np.float32(config.data.mean)) / np.float32(config.data.std)
    return np.pad(pixels, [(0, 0), (0, sh - pixels.shape[1]), (0, sw - pixels.shape[2]), (0, 0)])


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def exported(request, tmp_path_factory, data_root):
    """(config, workdir, manifest, reference(images [B,SH,SW,3]) -> probabilities [B,H,W,C], the stage's log)."""
    jax.config.update("jax_enable_x64", False)
    config = smoke_config(data_root, **CONFIGS[request.param])
    stages.check_config(config)
    workdir = str(tmp_path_factory.mktemp(request.param))
    save_fresh_checkpoint(config, workdir)
    lines = []
    record = stages.run_export(config, workdir, log=lines.append)
    state = stages.restore_for_inference(config, workdir, log=lambda line: None)
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    predict_fn = stages.predict_fn(config, state, workdir)
    pad_size, _ = export.sizes(config)
    reference = jax.jit(lambda images: predict_fn(variables, images, pad_size))
    yield config, workdir, record, lambda images: np.asarray(reference(images)), lines
    jax.config.update("jax_enable_x64", True)


def test_the_manifest_records_the_shapes_normalisation_and_inference(exported):
    config, workdir, record, _, lines = exported
    out = os.path.join(workdir, "export")
    assert sorted(os.listdir(out)) == ["manifest.json", "model.jax_exported", "saved_model"]
    with open(os.path.join(out, "manifest.json")) as f:
        assert json.load(f) == record
    pad_size, input_size = export.sizes(config)
    assert pad_size == (40, 48) and input_size == ((30, 36) if config.data.input_scale == 0.75 else (40, 48))
    assert record["input"]["shape"] == ["b", *input_size, 3] and record["input"]["dtype"] == "float32"
    assert record["output"]["shape"] == ["b", 40, 48, 8] and record["output"]["dtype"] == "float32"
    assert record["input"]["mean"] == list(config.data.mean) and record["input"]["std"] == list(config.data.std)
    assert record["class_names"][0] == "background" and len(record["class_names"]) == 8
    assert record["platforms"] == ["cpu", "cuda", "tpu"] and record["versions"]["jax"] == jax.__version__
    assert record["inference"]["mode"] == config.eval.inference.mode
    assert record["inference"]["postprocess"] == config.eval.inference.postprocess
    assert any("jax.export for ('cpu', 'cuda', 'tpu')" in line for line in lines), lines
    assert lines[-1].endswith(f"(TF SavedModel) and manifest.json in {out}")
    assert sorted(os.listdir(workdir)) == ["checkpoints", "export"]  # no staging folder left


def test_the_jax_export_artifact_runs_without_semeda_jax(exported, tmp_path, rng):
    config, workdir, _, reference, _ = exported
    _, (sh, sw) = export.sizes(config)
    images = rng.normal(size=(3, sh, sw, 3)).astype(np.float32)
    np.save(tmp_path / "images.npy", images)
    run_blocked(f"""
        import numpy as np
        import jax
        exported = jax.export.deserialize(bytearray(open({os.path.join(workdir, "export", "model.jax_exported")!r},
                                                         "rb").read()))
        assert exported.platforms == ("cpu", "cuda", "tpu"), exported.platforms
        images = np.load("images.npy")
        np.save("batch1.npy", np.asarray(exported.call(images[:1])))
        np.save("batch3.npy", np.asarray(exported.call(images)))
    """, {"semeda_jax"}, str(tmp_path))
    expected = reference(images)
    batch1, batch3 = np.load(tmp_path / "batch1.npy"), np.load(tmp_path / "batch3.npy")
    assert batch3.shape == expected.shape == (3, 40, 48, 8) and batch3.dtype == np.float32
    np.testing.assert_allclose(batch3, expected, rtol=0, atol=TOLERANCE)
    np.testing.assert_allclose(batch1, expected[:1], rtol=0, atol=TOLERANCE)
    print(f"jax.export max |diff|: {np.abs(batch3 - expected).max():.2e} (batch 3), "
          f"{np.abs(batch1 - expected[:1]).max():.2e} (batch 1)")


def test_the_saved_model_serves_raw_rgb_without_jax(exported, tmp_path, rng):
    """serving_default on uint8 images smaller than the export size (padded and cropped in the graph) and
    "normalized" on the network's input, at batch 1 and 3, against the jitted model."""
    config, workdir, _, reference, _ = exported
    rgb = rng.integers(0, 256, (3, 33, 41, 3)).astype(np.uint8)
    network_input = eval_input(rgb, config)
    np.save(tmp_path / "rgb.npy", rgb)
    np.save(tmp_path / "input.npy", network_input)
    run_blocked(f"""
        import numpy as np
        import tensorflow as tf
        model = tf.saved_model.load({os.path.join(workdir, "export", "saved_model")!r})
        serve, normalized = model.signatures["serving_default"], model.signatures["normalized"]
        rgb, network_input = np.load("rgb.npy"), np.load("input.npy")
        for batch in (1, 3):
            out = serve(images=tf.constant(rgb[:batch]))
            np.save(f"probabilities{{batch}}.npy", out["probabilities"].numpy())
            np.save(f"mask{{batch}}.npy", out["mask"].numpy())
            np.save(f"normalized{{batch}}.npy",
                    normalized(images=tf.constant(network_input[:batch]))["probabilities"].numpy())
    """, {"semeda_jax", "jax", "jaxlib"}, str(tmp_path))
    expected = reference(network_input)
    for batch in (1, 3):
        probabilities, mask = np.load(tmp_path / f"probabilities{batch}.npy"), np.load(tmp_path / f"mask{batch}.npy")
        assert probabilities.shape == (batch, 33, 41, 8) and mask.shape == (batch, 33, 41) and mask.dtype == np.int32
        np.testing.assert_allclose(probabilities, expected[:batch, :33, :41], rtol=0, atol=TOLERANCE)
        np.testing.assert_array_equal(mask, probabilities.argmax(-1))
        normalized = np.load(tmp_path / f"normalized{batch}.npy")
        np.testing.assert_allclose(normalized, expected[:batch], rtol=0, atol=TOLERANCE)
        print(f"SavedModel max |diff| at batch {batch}: serving_default "
              f"{np.abs(probabilities - expected[:batch, :33, :41]).max():.2e}, normalized "
              f"{np.abs(normalized - expected[:batch]).max():.2e}")


def test_the_serving_signature_refuses_images_larger_than_the_export_size(exported):
    config, workdir, _, _, _ = exported
    serve = tf.saved_model.load(os.path.join(workdir, "export", "saved_model")).signatures["serving_default"]
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"images larger than the export size \(40, 48\)"):
        serve(images=tf.zeros((1, 41, 48, 3), tf.uint8))


def test_an_export_replaces_the_earlier_one_only_when_complete(tmp_path, data_root):
    """A per-pixel linear classifier exported over a folder with a stale file, then an export that fails while
    tracing: the first replaces the folder, the second leaves it as it was, and no staging folder stays."""
    config = smoke_config(data_root, **{"export.pad_size": (8, 8), "export.platforms": ("cpu",)})
    spec, out = inference.spec_for(config), str(tmp_path / "export")
    os.makedirs(out)
    open(os.path.join(out, "stale"), "w").close()
    weights = {"w": np.ones((3, config.dataset.num_classes), np.float32)}

    def linear(variables, images, size):
        return jax.nn.softmax(images @ variables["w"])

    export.export_model(linear, weights, config, spec, out, log=lambda line: None)
    assert sorted(os.listdir(out)) == ["manifest.json", "model.jax_exported", "saved_model"]
    with pytest.raises(TypeError):
        export.export_model(lambda variables, images, size: images @ None, weights, config, spec, out,
                            log=lambda line: None)
    assert sorted(os.listdir(tmp_path)) == ["export"]
    assert sorted(os.listdir(out)) == ["manifest.json", "model.jax_exported", "saved_model"]


@pytest.mark.parametrize("field, value, message", [
    ("pad_size", (40,), r"^config.export.pad_size: expected two integers \(H, W\) >= 1"),
    ("platforms", ("cpu", "gpu"), r"^config.export.platforms: expected distinct names of"),
    ("platforms", ("cpu", "cpu"), r"^config.export.platforms: expected distinct names of"),
    ("platforms", (), r"^config.export.platforms: expected distinct names of"),
])
def test_bad_export_fields_are_named(field, value, message, data_root):
    config = smoke_config(data_root)
    config.export[field] = value
    with pytest.raises(ConfigError, match=message):
        export.check_config(config)


def test_the_export_section_holds_the_fields_export_reads():
    assert set(common.base_config().export) == set(export.CONFIG_FIELDS)


def test_the_main_job_does_not_load_jax2tf(tmp_path):
    """Importing the entry point and the stages loads neither jax2tf nor this module's SavedModel writer."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    run_blocked(f"""
        import sys
        sys.path.insert(0, {repo!r})
        from semeda_jax import main, stages
        assert "export" in stages.STAGES
        loaded = [name for name in sys.modules if "jax2tf" in name]
        assert not loaded, loaded
    """, set(), str(tmp_path))
