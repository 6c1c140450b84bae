"""The evaluation loop (semeda_jax/evaluate.py) on a 1x1-conv "network" and the synthetic VOC split: the totals
summed on device equal the per-batch counts summed on the host in int64 / float64 and come to the host once;
Boundary IoU / boundary F and the per-image scores of the worst images equal NumPy references on the step's
predictions; a split's files are checked once per reader; a SIGTERM stops eval and the learned-fusion pass at
the next batch."""
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import references
from configs import common
from semeda_jax import data, evaluate, fusion, inference, metrics, parallel, preemption, train
from semeda_jax.data import pipeline
from semeda_jax.validation import ConfigError

C = 6  # synth_root's classes

pytestmark = pytest.mark.usefixtures("float32_jax")


def eval_config():
    config = common.base_config()
    config.dataset.num_classes = C
    config.data.eval_pad_size = (48, 64)
    config.data.eval_batch_size = 1  # 3 batches of the 3 val images
    config.model.output_stride = 1
    return config


def pointwise_state(rng):
    """A ModelState whose logits are a fixed 1x1 convolution of the image (no BN statistics)."""
    def apply_fn(variables, images, train=False):
        return {"logits": jnp.einsum("bhwk,kc->bhwc", images, variables["params"]["kernel"])}
    return train.ModelState(apply_fn, {"kernel": jnp.asarray(rng.normal(size=(3, C)), jnp.float32)}, {})


def step_outputs(state, reader, config):
    """(NumPy batch, the jitted count step's outputs on the host) of every eval batch (batches of 1)."""
    mesh = parallel.make_mesh(config)
    step = evaluate.jit_eval_counts(state.apply_fn, evaluate.PERIODIC, 1, C, tuple(config.eval.trimap_widths), mesh)
    index_of = {image_id: n for n, image_id in enumerate(reader.ids)}
    for batch in pipeline.eval_dataset(reader, pad_size=(48, 64), batch_size=1).as_numpy_iterator():
        inputs = evaluate.step_inputs(batch, index_of, evaluate.boundary_widths(config))
        yield batch, jax.device_get(step({"params": state.params, "batch_stats": {}},
                                         parallel.global_batch(inputs, mesh)))


def host_sums(state, reader, config):
    """The per-batch counts of the jitted count step summed on the host in int64 / float64 (the reference)."""
    totals = {}
    for _, out in step_outputs(state, reader, config):
        for key in evaluate.COUNTS:
            totals[key] = totals.get(key, 0) + np.asarray(out[key], np.float64 if key == "emeasure_sums" else np.int64)
    return totals


def test_eval_totals_match_host_sums_and_come_to_the_host_once(synth_root, rng, monkeypatch):
    config, state = eval_config(), pointwise_state(rng)
    reader = data.VOCSegmentation(synth_root, "val", C)
    want = evaluate.summarize(host_sums(state, reader, config), config.eval.trimap_widths)
    pulls, device_get = [], jax.device_get
    monkeypatch.setattr(jax, "device_get", lambda tree: pulls.append(tree) or device_get(tree))
    with jax.transfer_guard("disallow"):  # explicit transfers only: the batches' placement and one pull
        got = evaluate.evaluate(state, reader, config, spec=evaluate.PERIODIC)
    assert len(pulls) == 1 and "worst_images" not in got
    assert got["confusion_matrix"] == want["confusion_matrix"] and np.sum(got["confusion_matrix"]) > 0
    np.testing.assert_equal(got["trimap"], want["trimap"])  # NaN (a class absent from a band) equal to NaN
    np.testing.assert_allclose([got["miou"], got["emeasure"], got["boundary_iou"], got["boundary_fscore"]],
                               [want["miou"], want["emeasure"], want["boundary_iou"], want["boundary_fscore"]],
                               rtol=1e-12)


def test_device_totals_are_exact_beyond_32_bits_and_float_precision(rng):
    """add_counts: int32 counts near 2^31 summed past 2^32 exactly; float32 sums to float64 accuracy."""
    ints = rng.integers(2 ** 30, 2 ** 31, (50, 3, 3))
    floats = rng.random((50, C)).astype(np.float32) * 1000
    totals = None
    for i, f in zip(ints, floats):
        counts = {key: jnp.asarray(i, jnp.int32) for key in evaluate.COUNTS}
        counts["emeasure_sums"] = jnp.asarray(f)
        totals = evaluate.add_counts(totals, counts)
    got = evaluate.host_totals(jax.device_get(totals))
    np.testing.assert_array_equal(got["cm"], ints.sum(0))
    np.testing.assert_allclose(got["emeasure_sums"], floats.astype(np.float64).sum(0), rtol=1e-13)


def test_periodic_evals_check_the_files_once(synth_root, rng, monkeypatch):
    config, state = eval_config(), pointwise_state(rng)
    checks, pad_checks = [], []
    check_pad_size = pipeline.check_pad_size
    monkeypatch.setattr(pipeline, "check_pad_size", lambda *a, **k: pad_checks.append(a) or check_pad_size(*a, **k))
    reader = data.VOCSegmentation(synth_root, "val", C)
    reader_check = reader.check
    monkeypatch.setattr(reader, "check", lambda: checks.append(1) or reader_check())
    first = evaluate.evaluate(state, reader, config, spec=evaluate.PERIODIC)
    second = evaluate.evaluate(state, reader, config, spec=evaluate.PERIODIC)
    assert len(checks) == len(pad_checks) == 1 and first["miou"] == second["miou"]
    evaluate.evaluate(state, data.VOCSegmentation(synth_root, "val", C), config, spec=evaluate.PERIODIC)
    assert len(pad_checks) == 2  # a new reader (a new run) is checked again


@pytest.mark.parametrize("stage", ["eval", "learn_fusion"])
def test_sigterm_stops_the_pass_at_the_next_batch(synth_root, rng, monkeypatch, stage):
    config, state = eval_config(), pointwise_state(rng)
    reader = data.VOCSegmentation(synth_root, "val", C)
    placed, global_batch = [], parallel.global_batch

    def signal_at_the_first_batch(local, mesh):
        placed.append(local)
        if len(placed) == 1:
            signal.raise_signal(signal.SIGTERM)
        return global_batch(local, mesh)

    monkeypatch.setattr(parallel, "global_batch", signal_at_the_first_batch)
    with preemption.StopSignal(), pytest.raises(preemption.Preempted, match=f"during the {stage} stage"):
        if stage == "eval":
            evaluate.evaluate(state, reader, config)
        else:
            fusion.collect_candidates(state, reader, config, inference.InferenceSpec(), 4)
    assert len(placed) == 1  # 3 batches in the split


def reference_scores(state, reader, config):
    """From the step's predictions, image by image in NumPy: the split's Boundary IoU / F counts (pixel-loop
    reference at the config's band width and tolerance, else the diagonal's) and {id: (mIoU, Boundary IoU)}."""
    width, tolerance = evaluate.boundary_widths(config)
    totals, per_image = {}, {}
    for batch, out in step_outputs(state, reader, config):
        sizes = np.stack([batch["height"], batch["width"]], -1)
        counts = references.boundary_counts(batch["label"], out["predictions"], C,
                                            [width] if width else metrics.boundary_band_width(sizes),
                                            [tolerance] if tolerance else metrics.boundary_tolerance(sizes), sizes)
        totals = {key: totals.get(key, 0) + counts[key] for key in counts}
        cm = np.zeros((C, C), np.int64)
        valid = batch["label"][0] != references.VOID
        np.add.at(cm, (batch["label"][0][valid], out["predictions"][0][valid]), 1)
        iou = metrics.per_class_iou(cm)
        biou = counts["iou_intersection"] / np.where(counts["iou_union"] > 0, counts["iou_union"], np.nan)
        per_image[batch["id"][0].decode()] = (np.nanmean(iou), np.nanmean(biou))
    return totals, per_image


def test_boundary_scores_and_worst_images_equal_numpy_references(synth_root, rng):
    """Default widths (2% / 0.8% of the 48x64 diagonal: d = 2, t = 1) and fixed ones (d = 3, t = 2): the
    report's Boundary IoU / F equal the metric's summary of reference counts over the same predictions, and the
    worst images are the NumPy per-image mIoU / Boundary IoU ranking."""
    config, state = eval_config(), pointwise_state(rng)
    reader = data.VOCSegmentation(synth_root, "val", C)
    reports = {}
    for width, tolerance in ((0, 0), (3, 2)):
        config.eval.boundary_width, config.eval.boundary_tolerance = width, tolerance
        got = evaluate.evaluate(state, reader, config, spec=evaluate.PERIODIC, num_worst=2)
        totals, per_image = reference_scores(state, reader, config)
        for name, score in (("boundary_iou", metrics.boundary_iou), ("boundary_fscore", metrics.boundary_fscore)):
            per_class, mean = score(totals)
            assert got[name] == pytest.approx(mean, rel=1e-12)
            np.testing.assert_allclose(list(got[f"{name}_per_class"].values()), per_class, rtol=1e-12)
        assert got["boundary"] == {"width": width or "2% of diagonal", "tolerance": tolerance or "0.8% of diagonal"}
        for column, key in enumerate(("miou", "boundary_iou")):
            want = sorted(per_image, key=lambda image_id: per_image[image_id][column])[:2]
            assert [entry["id"] for entry in got["worst_images"][key]] == want
            np.testing.assert_allclose([entry[key] for entry in got["worst_images"][key]],
                                       [per_image[i][column] for i in want], rtol=1e-6)
        assert set(got["worst_panels"]) == {e["id"] for entries in got["worst_images"].values() for e in entries}
        panel = got["worst_panels"][want[0]]
        assert panel["prediction"].shape == panel["label"].shape == (48, 64)
        reports[width] = got
    assert reports[0]["miou"] == reports[3]["miou"] and reports[0]["boundary_iou"] != reports[3]["boundary_iou"]


@pytest.mark.parametrize("field", ["boundary_width", "boundary_tolerance", "num_worst_images"])
def test_eval_fields_must_be_integers_at_least_zero(field):
    config = common.base_config()
    config.eval[field] = -1
    with pytest.raises(ConfigError, match=f"config.eval.{field}: expected an integer >= 0"):
        evaluate.check_config(config)
