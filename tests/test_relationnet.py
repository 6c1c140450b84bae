"""configs/relationnet_cityscapes.py end to end: its variants are Table I's rows (loss, model switches, phases,
test-time inference, the paper's numbers in the docstring); the fine -> coarse -> fine schedule at smoke size on
generated Cityscapes data with gtCoarse and train_extra reads each phase's split, annotation and loss mix, and a
run interrupted inside the coarse stage resumes there bit for bit and evaluates with 4-step shifted testing;
every row's training runs (real jitted train steps of the smoke model)."""
import json
import re

import jax
import numpy as np
import pytest

from configs import relationnet_cityscapes as relationnet
from semeda_jax import evaluate, inference, parallel, phases, stages, train

import fake_datasets

pytestmark = pytest.mark.usefixtures("float32_jax")

CITYSCAPES_SIZES = {"fine": 2975, "fine_decay": 2975, "coarse": 2975 + 19998, "fine_again": 2975}


def test_variants_are_the_rows_of_table_one():
    for row, (loss, deformable, relation, stage_count, multistep, miou, macc) in relationnet.ROWS.items():
        config = relationnet.get_config(row)
        phases.check_phases(config)
        assert (config.loss, config.model.deformable, config.model.relation) == (loss, deformable, relation), row
        assert config.model.aux_heads == ("similarity" if "scl" in loss else "")
        assert (config.model.name, config.model.backbone, config.model.output_stride) == (
            "relationnet", "resnet38", 8)
        plan = phases.plan(config, CITYSCAPES_SIZES)
        assert [p.name for p in plan] == ["fine", "fine_decay", "coarse", "fine_again"][:stage_count + 1], row
        assert [p.loss for p in plan] == [loss, loss, "ohem", loss][:stage_count + 1]
        spec = inference.spec_for(config)
        assert (spec.mode, spec.shifts) == (("shifted", 4) if multistep else ("whole", 4)), row
        assert ("full" in evaluate.evaluators(config)) == multistep
        default = " (default)" if row == relationnet.DEFAULT_ROW else ""
        assert re.search(rf"^    {row}{re.escape(default)} .* {miou:.2f} / {macc:.2f}$", relationnet.__doc__,
                         re.M), row
    assert relationnet.get_config().to_dict() == relationnet.get_config("stage3").to_dict()
    with pytest.raises(ValueError, match=r"variants 'ohem' and 'dcn' both choose the row; give one of"):
        relationnet.get_config("ohem,dcn")
    with pytest.raises(ValueError, match=r"unknown variant 'resnet101'; known: \['ce', "):
        relationnet.get_config("resnet101")


def test_the_full_schedule_in_steps_and_learning_rates():
    """60 / 30 / 15 epochs of batch 8 on 2,975 fine and 22,973 coarse images; 5e-4 for 35 epochs, then linear
    to 5e-6 in each later phase; only the coarse phase reads other data (gtCoarse, train + train_extra)."""
    config = relationnet.get_config()
    plan = phases.plan(config, CITYSCAPES_SIZES)
    assert [p.steps for p in plan] == [13016, 9297, 86149, 5579]  # ceil(epochs * images / 8)
    assert [(p.split, p.annotation) for p in plan] == [("train", ""), ("train", ""),
                                                      ("train+train_extra", "gtCoarse"), ("train", "")]
    schedule = phases.joined_schedule(plan)
    for p in plan[1:]:  # every linear phase: 5e-4 at its first step, 5e-6 + one step's decrement at its last
        np.testing.assert_allclose([float(schedule(p.start)), float(schedule(p.end - 1))],
                                   [5e-4, 5e-6 + (5e-4 - 5e-6) / p.steps], rtol=1e-4)
    np.testing.assert_allclose(float(schedule(plan[0].end - 1)), 5e-4)
    data = phases.phase_data(config)
    assert list(data) == ["coarse"] and data["coarse"][1] == "train+train_extra"
    assert data["coarse"][0].annotation == "gtCoarse" and config.dataset.annotation == "gtFine"
    assert (config.data.batch_size, config.data.crop_size, config.data.scale_range) == (8, (512, 520), (0.55, 1.3))
    assert (config.losses.ohem.threshold, config.losses.ohem.min_kept, config.losses.scl.weight) == (0.6, 0, 0.1)


@pytest.fixture(scope="module")
def cityscapes(tmp_path_factory):
    """Generated Cityscapes: gtFine train / val, gtCoarse train / train_extra."""
    return fake_datasets.write_fake_cityscapes(tmp_path_factory.mktemp("cityscapes"))


def smoke_config(fake):
    config = relationnet.get_config("stage3,smoke")
    config.dataset.update(fake["dataset"])
    config.train.update(log_every=1, eval_every=100, checkpoint_every=100, keep_checkpoints=10)
    return config


def spy_on_streams(monkeypatch):
    """Record (split, annotation, ids, first batch) of every training stream the loop opens."""
    opened = []

    def recording(config, reader, local_batch, process_index, process_count, start_step=0, seed=None):
        opened.append((reader.split, reader.annotation, list(reader.ids), start_step))
        return streams(config, reader, local_batch, process_index, process_count, start_step, seed)

    streams = train.train_batches
    monkeypatch.setattr(train, "train_batches", recording)
    return opened


def leaves(state):
    return jax.tree_util.tree_leaves((state.params, state.batch_stats, state.opt_state))


def test_three_stages_resume_inside_the_coarse_stage_and_evaluate_shifted(cityscapes, tmp_path, monkeypatch,
                                                                           no_hidden_transfers):
    config = smoke_config(cityscapes)
    stages.check_config(config)
    opened = spy_on_streams(monkeypatch)
    lines = []
    straight, history = stages.run_train(config, str(tmp_path / "straight"), log=lines.append)
    streams_straight, opened[:] = list(opened), []
    stages.run_train(config, str(tmp_path / "resumed"), log=lambda line: None, stop_after=6)  # coarse: 5-7
    opened[:] = []
    resumed_lines = []
    resumed, resumed_history = stages.run_train(config, str(tmp_path / "resumed"), log=resumed_lines.append)

    assert int(straight.step) == int(resumed.step) == 9
    for a, b in zip(leaves(straight), leaves(resumed)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert [m["loss"] for _, m in resumed_history] == [m["loss"] for _, m in history][6:]
    assert any("at step 6 (phase coarse)" in line for line in resumed_lines), resumed_lines
    # each phase's data: gtFine train, gtCoarse train + train_extra; the resumed run re-enters at batch 2
    splits = cityscapes["splits"]
    fine, coarse = ("train", "gtFine", splits["train"]), ("train+train_extra", "gtCoarse",
                                                           sorted(splits["train"] + splits["train_extra"]))
    assert streams_straight == [(*fine, 0), (*fine, 0), (*coarse, 0), (*fine, 0)]
    assert opened == [(*coarse, 2), (*fine, 0)]
    # each phase's loss mix and learning rate (5e-4 constant; linear 5e-4 -> 5e-6 over 2, 3, 2 steps)
    assert [sorted(k for k in m if k.startswith("loss_")) for _, m in history] == \
        [["loss_ohem", "loss_scl"]] * 4 + [["loss_ohem"]] * 3 + [["loss_ohem", "loss_scl"]] * 2
    decay2, decay3 = [5e-4, 5e-4 - (5e-4 - 5e-6) / 2], [5e-4 - k * (5e-4 - 5e-6) / 3 for k in range(3)]
    np.testing.assert_allclose([m["learning_rate"] for _, m in history],
                               [5e-4, 5e-4, *decay2, *decay3, *decay2], rtol=1e-5)
    assert any("coarse (steps 5-7, loss ohem, split train+train_extra)" in line for line in lines), lines
    # 4-step shifted testing at the end of training and in the eval stage (the same checkpoint, step 9, the only
    # evaluated one), over every valid val pixel
    (full,) = [line for line in lines if line.startswith("[eval:full] step 9: ")]
    report = stages.run_eval(config, str(tmp_path / "straight"), log=lambda line: None)
    assert f"mIoU {report['miou']:.4f} " in full
    with open(tmp_path / "straight" / "report.json") as f:
        assert json.load(f)["miou"] == pytest.approx(report["miou"])
    valid = sum(int((cityscapes["labels"][i] != 255).sum()) for i in splits["val"])
    assert int(np.sum(report["confusion_matrix"])) == valid


# Rows whose training no other test runs (stage1_multistep trains as stage1; stage2's phases are stage3's first
# three, which test_three_stages_... runs): two real train steps each on the smoke model.
TRAINED_ROWS = ("ce", "ohem", "dcn", "relation", "dcn_relation", "stage1")


def test_the_untrained_rows_train_as_trained_ones():
    def training(row):
        config = relationnet.get_config(row).to_dict()
        del config["eval"]["inference"]
        return config

    assert training("stage1_multistep") == training("stage1")
    stage2, stage3 = relationnet.get_config("stage2"), relationnet.get_config("stage3")
    assert stage3.phases.order.startswith(stage2.phases.order + ",")
    assert all(stage2.phases[name].to_dict() == stage3.phases[name].to_dict()
               for name in stage2.phases.order.split(","))
    assert training("stage2")["model"] == training("stage3")["model"]


@pytest.mark.parametrize("row", TRAINED_ROWS)
def test_every_variant_trains(row, rng):
    """Two steps of the trainer's jitted step with the row's model and first phase (its mix and schedule)."""
    config = relationnet.get_config(f"{row},smoke")
    config.dataset.root = "/nonexistent"  # check_config reads no data
    stages.check_config(config)
    mesh = parallel.make_mesh(config)
    plan = phases.plan(config)
    schedule = phases.joined_schedule(plan)
    state = train.create_train_state(config, train.build_segmentation_model(config, 19), jax.random.PRNGKey(0),
                                     mesh, schedule)
    names = {"/".join(str(k.key) for k in path) for path, _ in jax.tree_util.tree_leaves_with_path(state.params)}
    assert any("/offset/" in n for n in names) == config.model.deformable
    assert ("relation" in state.params) == config.model.relation
    assert ("aux_heads_0" in state.params) == ("scl" in config.loss)
    before = [np.asarray(leaf).copy() for leaf in jax.tree_util.tree_leaves(state.params)]
    step = train.jit_train_step(config, state, mesh, jax.random.PRNGKey(1), loss=plan[0].loss, schedule=schedule)
    labels = rng.integers(0, 19, (4, 32, 32))
    labels[:, :3] = 255
    batch = {"image": rng.normal(size=(4, 32, 32, 3)).astype(np.float32), "label": labels.astype(np.int32)}
    for _ in range(2):
        state, metrics = step(state, parallel.global_batch(batch, mesh), {})
    terms = {k: float(v) for k, v in metrics.items() if k.startswith("loss_")}
    assert set(terms) == {f"loss_{term}" for term in config.loss.split("+")}
    assert all(np.isfinite(v) for v in terms.values())
    np.testing.assert_allclose(float(metrics["loss"]), sum(terms.values()), rtol=1e-5)
    after = jax.tree_util.tree_leaves(state.params)
    assert int(state.step) == 2 and any(not np.array_equal(a, np.asarray(b)) for a, b in zip(before, after))
