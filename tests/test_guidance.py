"""configs/guidance_voc.py end to end at smoke size on a generated VOC-layout dataset: every Table 3 row of both
backbones trains a few steps and evaluates through the stages (baseline and +clsNet each train; +compatibility
and +learn to combine have +clsNet's model, loss and training, so they evaluate its checkpoint: the learned row
runs the learn_fusion stage first), and the CRF layer trains inside the model."""
import json
import os

import numpy as np
import pytest

from configs import guidance_voc
from semeda_jax import checkpointing, fusion, stages
from semeda_jax.validation import ConfigError

pytestmark = pytest.mark.usefixtures("float32_jax")
QUIET = dict(log=lambda line: None)


def tiny(arg, root, views=1):
    """The smoke variant on the generated dataset (6 classes, 48x64), 2 steps, whole-image unflipped inference
    (the periodic evaluator's, so training evaluates once) or with `views` = 2 the image and its mirror."""
    config = guidance_voc.get_config(f"{arg},smoke")
    config.dataset.update(name="voc", root=str(root), num_classes=6, train_split="train", val_split="val")
    config.data.update(eval_pad_size=(48, 64), eval_batch_size=3)
    config.train.update(steps=2, log_every=2, eval_every=2, checkpoint_every=2)
    config.eval.update(num_plot_images=0, trimap_widths=(1, 3))
    config.eval.inference.update(scales=(1.0,), flip=views == 2)
    config.eval.crf.radius = 2
    config.eval.learn_fusion.update(pixels_per_image=64, steps=20)
    stages.check_config(config)
    return config


def same_training(a, b):
    return all(a[key].to_dict() == b[key].to_dict() for key in ("model", "data", "optimizer", "train")) \
        and a.loss == b.loss


@pytest.mark.parametrize("backbone", ["vgg16", "resnet101"])
def test_every_table_3_row_trains_and_evaluates(backbone, synth_root, tmp_path):
    """baseline and clsnet train (evaluated at their last step); compatibility and learned evaluate clsnet's
    checkpoint (the same model, loss and training), learned after its learn_fusion stage. Their inference does
    not depend on the backbone, so for ResNet-101 (a slower compile) only their configs are checked."""
    configs = {row: tiny(f"{backbone},{row}", synth_root, views=2 if row == "learned" else 1)
               for row in guidance_voc.ROWS}
    assert not same_training(configs["baseline"], configs["clsnet"])
    for row in ("compatibility", "learned"):
        assert same_training(configs[row], configs["clsnet"]), row
    assert configs["compatibility"].eval.crf.compatibility == "content"
    for row in ("baseline", "clsnet"):
        _, history = stages.run_train(configs[row], str(tmp_path / row), **QUIET)
        assert np.isfinite(history[-1][1]["loss"]) and ("loss_multilabel" in history[-1][1]) is False
        best = checkpointing.Checkpoints(str(tmp_path / row / "checkpoints"), best_metric="miou")
        assert best.best_step() == 2
    if backbone == "resnet101":
        return
    workdir = str(tmp_path / "clsnet")
    reports = {"compatibility": stages.run_eval(configs["compatibility"], workdir, **QUIET)}
    with pytest.raises(FileNotFoundError, match="fusion_weights.json: no learned view weights"):
        stages.run_eval(configs["learned"], workdir, **QUIET)
    assert configs["learned"].stages == ("train", "learn_fusion", "eval")
    record = stages.run_learn_fusion(configs["learned"], workdir, **QUIET)
    saved = json.load(open(os.path.join(workdir, fusion.WEIGHTS_FILE)))
    assert np.shape(saved["weights"]) == (2, 6) and saved["views"] == [[1.0, False], [1.0, True]]
    assert saved["split"] == "train" and record["loss_learned"] <= record["loss_avg"] + 1e-6
    assert np.abs(np.asarray(saved["weights"]) - 1).max() > 1e-4
    reports["learned"] = stages.run_eval(configs["learned"], workdir, **QUIET)
    for row, report in reports.items():
        assert 0 <= report["miou"] <= 1 and len(report["trimap"]["boundary_miou"]) == 2, row


def test_the_crf_layer_trains_inside_the_model_with_the_multilabel_loss(synth_root, tmp_path):
    """crflayer: the content CRF refines the logits in the training step (its gradient reaches the class
    branch through mu as well as through the multi-label term) and in evaluation; post-processing is off."""
    config = tiny("vgg16,compatibility,crflayer,multilabel", synth_root)
    assert config.model.crf_layer and config.eval.inference.postprocess == "" and config.loss == "ce+multilabel"
    _, history = stages.run_train(config, str(tmp_path), **QUIET)
    assert {"loss_ce", "loss_multilabel"} <= set(history[-1][1]) and np.isfinite(history[-1][1]["loss"])
    on = config.copy_and_resolve_references()
    on.eval.inference.postprocess = "guided_crf"
    with pytest.raises(ConfigError, match="would apply the CRF a second time"):
        stages.check_config(on)
