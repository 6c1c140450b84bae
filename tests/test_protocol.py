"""benchmarks/protocol.py: the paired statistics (semeda_jax/stats.py) against scipy-free arithmetic, its tables on
a fixed input (unchanged since the statistics moved), and the whole protocol end to end at smoke size (2 seeds, a
few steps); benchmarks/pac_bal.py's loop and tables with known scores."""
import json
import math

import numpy as np
import pytest

from benchmarks import protocol, protocol_tuning
from semeda_jax import stats

pytestmark = pytest.mark.usefixtures("float32_jax")


def test_paired_statistics():
    base = [dict.fromkeys(protocol.METRICS, 0.5) for _ in range(3)]
    arm = [dict.fromkeys(protocol.METRICS, 0.5 + d) for d in (0.01, 0.02, 0.03)]
    got = stats.paired_statistics(arm, base, protocol.METRICS)["miou"]
    # t_{0.975, 2} = 4.302653 (two-sided 95%, 2 degrees of freedom); std of (1, 2, 3) points with ddof 1 = 1.
    half = 4.302653 * 0.01 / math.sqrt(3)
    assert got["mean_delta"] == pytest.approx(0.02) and got["std"] == pytest.approx(0.01)
    np.testing.assert_allclose(got["ci95"], [0.02 - half, 0.02 + half], rtol=1e-6)
    assert got["seeds_won"] == 3 and got["seeds"] == 3
    one = stats.paired_statistics(arm[:1], base[:1], protocol.METRICS)["miou"]
    assert math.isnan(one["std"]) and math.isnan(one["ci95"][0]) and one["seeds_won"] == 1
    assert stats.decision(got) == "no difference shown" and stats.decision(one) == "n/a"  # CI [-0.5, +4.5] points
    assert stats.decision(dict(got, ci95=[0.01, 0.03])) == "better"
    assert stats.decision(dict(got, ci95=[-0.03, -0.01])) == "worse"


def fixed_result() -> dict:
    """A protocol result with known scores: 3 seeds, a failed seed, per-seed deltas that vary."""
    def rows(offset):
        return [dict(seed=s, scores={m: 0.5 + offset * (1 + s) + 0.01 * ((s * 7 + i * 3) % 5)
                                     for i, m in enumerate(protocol.METRICS)},
                     grad_norm_ratio=1.5 + s if offset else None) for s in range(3)]
    return dict(seeds=[0, 1, 2], steps=5, pretrain_steps=2, pretrain_images=8, registered=False,
                arms={"ppce": dict(per_seed=rows(0.0)), "semeda": dict(per_seed=rows(0.02)),
                      "sobel": dict(per_seed=rows(-0.01)[:2] + [dict(seed=2, failed="NonFiniteError: x")])})


# protocol.md of fixed_result(), written by the code before the statistics moved to semeda_jax/stats.py.
FIXED_TABLE = """\
seeds [0, 1, 2], 5 fine-tuning steps, pre-training 2 steps on 8 images; NOT the registered budget

| arm | seeds | mIoU | mean F1 | E-measure | trimap w=1 | trimap w=3 | trimap w=5 | trimap w=10 | SEMEDA/CE grad ratio |
|---|---|---|---|---|---|---|---|---|---|
| ppce | 3 | 52.00 | 51.67 | 51.33 | 52.67 | 52.33 | 52.00 | 51.67 | n/a |
| semeda | 3 | 56.00 | 55.67 | 55.33 | 56.67 | 56.33 | 56.00 | 55.67 | 2.5 |
| sobel | 2 (+1 failed) | 49.50 | 50.00 | 50.50 | 51.00 | 51.50 | 49.50 | 50.00 | 2 |

Paired against PPCE (points): mean delta [95% CI], std, seeds won

| arm | mIoU | mean F1 | E-measure | trimap w=1 | trimap w=3 | trimap w=5 | trimap w=10 |
|---|---|---|---|---|---|---|---|
| semeda | {semeda} |
| sobel | {sobel} |
""".format(semeda=" | ".join(["+4.00 [-0.97, +8.97], 2.00, 3/3"] * 7),
           sobel=" | ".join(["-1.50 [-7.85, +4.85], 0.71, 0/2"] * 7))


def test_tables_unchanged_on_a_fixed_input(tmp_path):
    protocol.write_results(fixed_result(), str(tmp_path))
    assert (tmp_path / "protocol.md").read_text() == FIXED_TABLE
    saved = json.loads((tmp_path / "protocol.json").read_text())["arms"]["semeda"]["vs_ppce"]
    assert list(saved) == list(protocol.METRICS)
    half = 4.302653 * 0.02 / math.sqrt(3)  # deltas 2, 4, 6 points: std 2 points
    assert saved["miou"]["ci95"] == pytest.approx([0.04 - half, 0.04 + half], rel=1e-6)


def test_boundary_columns_when_every_report_has_them(tmp_path):
    """The eval stage's boundary IoU / F means become columns (and paired statistics) when every run has them."""
    report = dict(miou=0.5, mean_f1=0.6, emeasure=0.7, trimap=dict(widths=[1, 3, 5, 10], boundary_miou=[0.1] * 4),
                  boundary_iou=0.3, boundary_fscore=0.4)
    assert protocol.scores(report)["boundary_fscore"] == 0.4
    result = fixed_result()
    for entry in result["arms"].values():
        for i, row in enumerate(r for r in entry["per_seed"] if "scores" in r):
            row["scores"].update(boundary_iou=0.3 + 0.01 * i, boundary_fscore=0.4)
    protocol.write_results(result, str(tmp_path))
    table = (tmp_path / "protocol.md").read_text()
    assert "| trimap w=10 | boundary IoU | boundary F | SEMEDA/CE grad ratio |" in table
    assert "| ppce | 3 | 52.00 | 51.67 | 51.33 | 52.67 | 52.33 | 52.00 | 51.67 | 31.00 | 40.00 | n/a |" in table
    assert result["arms"]["semeda"]["vs_ppce"]["boundary_iou"]["mean_delta"] == pytest.approx(0.0)
    del result["arms"]["sobel"]["per_seed"][0]["scores"]["boundary_iou"]  # one run without: no column
    assert "boundary IoU" not in protocol.format_table(result)


def test_grad_norm_ratio_from_history():
    history = [(10, {"logit_grad_norm_ce": 2.0, "logit_grad_norm_semeda": 1.0}),
               (20, {"logit_grad_norm_ce": 1.0, "logit_grad_norm_semeda": 1.5})]
    assert protocol.grad_norm_ratio(history) == pytest.approx(1.0)
    assert protocol.grad_norm_ratio([(10, {"loss": 1.0})]) is None


def test_finetune_recipe():
    config = protocol.finetune_config(protocol.base_config(tiny=True), "semeda_mean", 3, 40, "/pre", "/g")
    assert config.seed == 3 and config.loss == "ce+semeda" and config.losses.semeda.reduction == "mean"
    assert config.model.bn_mode == "frozen" and config.data.batch_size == 6
    assert config.optimizer.learning_rate == 5e-4 and config.optimizer.poly_power == 0.9
    assert tuple(config.data.scale_range) == (0.5, 2.0) and config.train.eval_every == 40
    assert config.train.log_logit_grad_norms and config.edge_net.checkpoint == "/g"
    assert config.train.init_checkpoint == "/pre"
    normalized = protocol.finetune_config(protocol.base_config(tiny=True), "semeda_normalized", 0, 4, "/pre", "")
    assert normalized.losses.semeda.normalize and normalized.loss == "ce+semeda"


def test_protocol_end_to_end(tmp_path):
    arms = ("ppce", "semeda")  # each arm x seed compiles its own train step: the other arms differ in config only
    result = protocol.run_protocol(str(tmp_path), seeds=(0, 1), steps=2, pretrain_steps=2, pretrain_images=8,
                                   arms=arms, tiny=True, log=lambda line: None)
    assert not result["registered"]
    for arm in arms:
        rows = result["arms"][arm]["per_seed"]
        assert [r["seed"] for r in rows] == [0, 1] and all("scores" in r for r in rows), rows
    semeda = result["arms"]["semeda"]
    assert semeda["per_seed"][0]["grad_norm_ratio"] > 0
    deltas = [s["scores"]["miou"] - p["scores"]["miou"]
              for s, p in zip(semeda["per_seed"], result["arms"]["ppce"]["per_seed"])]
    assert semeda["vs_ppce"]["miou"]["mean_delta"] == pytest.approx(np.mean(deltas))
    saved = json.loads((tmp_path / "protocol.json").read_text())
    assert saved["arms"]["semeda"]["vs_ppce"]["boundary_w10"]["seeds"] == 2
    table = (tmp_path / "protocol.md").read_text()
    assert "NOT the registered budget" in table and "| semeda |" in table
    # A second call reuses every finished arm (and the pre-training): nothing is trained again.
    again = protocol.run_protocol(str(tmp_path), seeds=(0, 1), steps=2, pretrain_steps=2, pretrain_images=8,
                                  arms=arms, tiny=True, log=lambda line: None)
    assert again["arms"]["semeda"]["per_seed"] == semeda["per_seed"]


def test_pac_bal_runs_every_arm_and_pairs_them(tmp_path, monkeypatch):
    """benchmarks/pac_bal.py's loop and tables, with protocol.run_arm (trained end to end above) replaced by
    known scores: every arm x seed is run with its own config, and the paired deltas are the known ones."""
    from benchmarks import pac_bal
    config = pac_bal.arm_config("pac_bal", 2)
    assert (config.model.name, config.loss, config.seed) == ("deeplab_v3_pac", "bal", 2)
    assert (config.losses.bal.size, config.losses.bal.sigma, config.train.steps) == (7, 0.53, 1200)
    offset = {"v3_ce": 0.0, "v3_bal": 0.01, "pac_bal": 0.03}
    seen = []

    def fake_run_arm(config, workdir, log):
        arm = next(a for a, (model, loss) in pac_bal.ARMS.items() if (model, loss) == (config.model.name, config.loss))
        seen.append((arm, config.seed, workdir))
        return dict(scores=dict.fromkeys(protocol.METRICS, 0.5 + offset[arm] + 0.001 * config.seed))

    monkeypatch.setattr(protocol, "run_arm", fake_run_arm)
    result = pac_bal.run(str(tmp_path), seeds=(0, 1, 2), tiny=True, log=lambda line: None)
    assert [(a, s) for a, s, _ in seen] == [(a, s) for s in (0, 1, 2) for a in pac_bal.ARMS]
    assert len({w for _, _, w in seen}) == 9
    for pair, delta in (("v3_bal - v3_ce", 0.01), ("pac_bal - v3_ce", 0.03), ("pac_bal - v3_bal", 0.02)):
        got = result["paired"][pair]["miou"]
        assert got["mean_delta"] == pytest.approx(delta) and got["seeds_won"] == 3 and got["seeds"] == 3
    table = (tmp_path / "pac_bal.md").read_text()
    assert "| pac_bal - v3_bal | +2.00 [" in table and "| pac_bal | 3 | 53.10 |" in table


GRID = {"semeda": (0.3, 1.0), "sobel": (1.2, 4.0)}
RATES = (5e-4, 1e-3)


def test_tuning_run_names():
    """The protocol's own settings are its arms (reused); the others are named by setting and rate."""
    run_name, tuned_overrides = protocol_tuning.run_name, protocol_tuning.tuned_overrides
    assert run_name("ppce", None, 5e-4) == "ppce" and run_name("semeda", 1.0, 5e-4) == "semeda"
    assert run_name("ppce", None, 1e-3) == "ppce_lr0.001"
    assert run_name("semeda", 0.3, 2.5e-4) == "semeda_scale0.3_lr0.00025"
    assert run_name("sobel", 4.0, 1e-3) == "sobel_coefficient4_lr0.001"
    config = protocol.base_config(tiny=True)
    assert tuned_overrides(config, "semeda", 0.1) == {"semeda.lambdas": pytest.approx((0.2, 0.4, 0.0))}
    assert tuned_overrides(config, "ppce", None) == {}
    tuned = protocol.finetune_config(config, "sobel", 0, 4, "/pre", "/g", 1e-3, {"sobel.coefficient": 1.2})
    assert tuned.losses.sobel.coefficient == 1.2 and tuned.optimizer.learning_rate == 1e-3


def test_tuning_selection_on_known_numbers():
    """select_settings: the largest mean over seeds of (mIoU gain + trimap w=3 gain) against ppce at the same
    rate; a setting with a failed seed is not eligible; an arm with none eligible gets no choice."""
    def row(seed, miou, w3):
        return dict(seed=seed, scores=dict(miou=miou, boundary_w3=w3))

    runs = {"ppce": [row(0, 0.50, 0.30), row(1, 0.52, 0.32)],
            "ppce_lr0.001": [row(0, 0.40, 0.20), row(1, 0.40, 0.20)],
            # lr 5e-4: gains (0.01 + 0.00, 0.01 + 0.02) -> 0.02 (scale 0.3); scale 1: -0.01
            "semeda_scale0.3_lr0.0005": [row(0, 0.51, 0.30), row(1, 0.53, 0.34)],
            "semeda": [row(0, 0.49, 0.30), row(1, 0.52, 0.31)],
            # lr 1e-3: scores below lr 5e-4's but gains against ppce_lr0.001 larger: 0.05 and 0.08 (failed seed)
            "semeda_scale0.3_lr0.001": [row(0, 0.43, 0.22), row(1, 0.42, 0.23)],
            "semeda_scale1_lr0.001": [row(0, 0.45, 0.23), dict(seed=1, failed="NonFiniteError: x")],
            "sobel_coefficient1.2_lr0.0005": [dict(seed=0, failed="x"), row(1, 0.6, 0.4)]}
    chosen = protocol_tuning.select_settings(runs, (0, 1), GRID, RATES)
    semeda = chosen["semeda"]
    assert (semeda["value"], semeda["lr"]) == (0.3, 1e-3) and semeda["gain"] == pytest.approx(0.05)
    assert semeda["gains"]["semeda_scale0.3_lr0.0005"] == pytest.approx(0.02)
    assert semeda["gains"]["semeda"] == pytest.approx(-0.01)
    assert semeda["gains"]["semeda_scale1_lr0.001"] is None
    assert chosen["sobel"]["value"] is None and set(chosen["sobel"]["gains"].values()) == {None}
    table = protocol_tuning.format_tuning(dict(seeds=[0, 1], steps=5, grid=GRID, rates=list(RATES), runs=runs,
                                               chosen=chosen))
    assert "| 0.3 | +2.00 | +5.00* |" in table and "| 1 | -1.00 | n/a |" in table
    assert "chosen: scale 0.3, lr 0.001 -> semeda_tuned" in table and "chosen: none" in table
    assert "| | 51.00 | 40.00 |" in table  # ppce's mIoU per rate
    # one seed only: scale 1 at 1e-3 (gain 0.08 on seed 0) wins
    assert protocol_tuning.select_settings(runs, (0,), GRID, RATES)["semeda"]["gain"] == pytest.approx(0.08)


def test_tuning_end_to_end(tmp_path, monkeypatch):
    """--tune at smoke size (one value x 2 learning rates, 1-step runs, one seed): the tuning runs read data seed
    2000 and live in WORKDIR/tuning, the val arms read seed 0; the tables are written and a second call trains
    nothing."""
    seen = []
    real_run_arm = protocol.run_arm

    def spy(config, workdir, log):
        seen.append((config.dataset.seed, config.optimizer.learning_rate, workdir))
        return real_run_arm(config, workdir, log)

    monkeypatch.setattr(protocol, "run_arm", spy)
    grid = {"semeda": (1.0,)}
    result = protocol_tuning.run_tuning(str(tmp_path), seeds=(0,), compare_seeds=(0,), steps=1, pretrain_steps=2,
                                        pretrain_images=8, grid=grid, rates=RATES, tiny=True, log=lambda line: None)
    tuning_dirs = {w for s, _, w in seen if w.startswith(str(tmp_path / "tuning"))}
    assert len(tuning_dirs) == 4 and all(s == protocol.TUNING_DATA_SEED for s, _, w in seen if w in tuning_dirs)
    val = [(s, lr, w) for s, lr, w in seen if w not in tuning_dirs]
    pick = result["tuning"]["chosen"]["semeda"]
    assert {s for s, _, _ in val} == {0} and pick["value"] == 1.0 and pick["lr"] in RATES
    assert {w for _, _, w in val} == {str(tmp_path / protocol_tuning.run_name(arm, value, lr) / "seed0")
                                      for arm, value, lr in (("ppce", None, 5e-4), ("ppce", None, pick["lr"]),
                                                             ("semeda", pick["value"], pick["lr"]))}
    assert all(lr == pick["lr"] for _, lr, w in val if "ppce/" not in w)
    assert "semeda_tuned - " in (tmp_path / "tuned.md").read_text()
    assert "*" in (tmp_path / "tuning.md").read_text()
    assert json.loads((tmp_path / "tuning.json").read_text())["chosen"]["semeda"]["lr"] == pick["lr"]

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(protocol.stages, "run_train", no_training)
    again = protocol_tuning.run_tuning(str(tmp_path), seeds=(0,), compare_seeds=(0,), steps=1, pretrain_steps=2,
                                       pretrain_images=8, grid=grid, rates=RATES, tiny=True, log=lambda line: None)
    assert again["comparison"]["arms"] == result["comparison"]["arms"]
