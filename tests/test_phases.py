"""Training phases (semeda_jax/phases.py): a two-phase toy schedule (different loss mix, split and learning-rate
schedule per phase) killed inside phase 2 resumes bit for bit; the plan, the joined schedule and the phase
checks against hand-computed values. The training steps run under jax.transfer_guard("disallow") (train.py): a
hidden host <-> device copy in the step fails them."""
import jax
import numpy as np
import pytest

from configs import demo
from semeda_jax import checkpointing, phases, stages
from semeda_jax.validation import ConfigError

pytestmark = pytest.mark.usefixtures("float32_jax")


def two_phase_config(data_root):
    config = demo.get_config("smoke")
    config.dataset.root = data_root
    config.loss = "ce"
    config.train.update(log_every=1, eval_every=100, checkpoint_every=2, keep_checkpoints=10)
    config.phases = phases_section()
    return config


def phases_section():
    import ml_collections
    return ml_collections.ConfigDict(dict(
        order="warm,boundary",
        warm=dict(steps=3, schedule="constant", learning_rate=0.05),
        boundary=dict(steps=4, split="val", loss="ce+bal", schedule="linear", learning_rate=0.02,
                      end_learning_rate=0.0, eval_every=4)))


def test_plan_and_joined_schedule():
    config = demo.get_config("smoke")
    config.phases = phases_section()
    plan = phases.plan(config)
    assert [(p.name, p.start, p.end, p.loss, p.split, p.eval_every) for p in plan] == [
        ("warm", 0, 3, "ce+semeda", "train", 6), ("boundary", 3, 7, "ce+bal", "val", 4)]
    schedule = phases.joined_schedule(plan)
    # constant 0.05 for steps 0-2, then linear 0.02 -> 0 over 4 steps: 0.02, 0.015, 0.01, 0.005
    np.testing.assert_allclose([float(schedule(t)) for t in range(7)],
                               [0.05, 0.05, 0.05, 0.02, 0.015, 0.01, 0.005], rtol=1e-6)
    assert phases.phase_at(plan, 3).name == "warm" and phases.phase_at(plan, 4).name == "boundary"
    # epochs -> steps from the training-set size: ceil(2.5 * 10 / 4) = 7
    config.phases.warm = dict(epochs=2.5)
    assert phases.plan(config, {"warm": 10, "boundary": 6})[0].steps == 7
    # without phases: one phase of config.train.steps with the top-level loss, cadence and warm-up + poly
    config.phases = phases_section()
    config.phases.order = ""
    (only,) = phases.plan(config)
    assert (only.name, only.start, only.steps, only.loss) == ("train", 0, config.train.steps, config.loss)


@pytest.mark.parametrize("edit, fragment", [
    (lambda p: p.warm.update(steps=0), "config.phases.warm: give exactly one of steps or epochs"),
    (lambda p: p.boundary.update(epochs=2), "config.phases.boundary: give exactly one of steps or epochs"),
    (lambda p: p.warm.update(schedule="cosine"), "config.phases.warm.schedule: unknown 'cosine'"),
    (lambda p: p.boundary.update(loss="ce+dicee"), "config.phases.boundary.loss: unknown term 'dicee'"),
    (lambda p: p.update(order="warm,boundary,cool"), "config.phases.order: phase 'cool' has no section"),
    (lambda p: p.update(order="warm"), "config.phases.boundary: not in config.phases.order"),
])
def test_bad_phases_are_named(edit, fragment):
    config = demo.get_config("smoke")
    config.phases = phases_section()
    with config.phases.unlocked():
        edit(config.phases)
    with pytest.raises(ConfigError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        stages.check_config(config)


def test_unknown_phase_field_is_named():
    config = demo.get_config("smoke")
    config.phases = phases_section()
    config.phases.warm.lr = 0.1
    with pytest.raises(ConfigError, match="config.phases.warm.lr: no such phase field"):
        stages.check_config(config)


def leaves(state):
    return jax.tree_util.tree_leaves((state.params, state.batch_stats, state.opt_state))


def test_killed_inside_phase_two_resumes_bit_for_bit(tmp_path):
    config = two_phase_config(str(tmp_path / "data"))
    stages.check_config(config)
    straight, history = stages.run_train(config, str(tmp_path / "straight"), log=lambda line: None)
    stages.run_train(config, str(tmp_path / "resumed"), log=lambda line: None, stop_after=5)  # in phase 2
    lines = []
    resumed, resumed_history = stages.run_train(config, str(tmp_path / "resumed"), log=lines.append)
    assert int(straight.step) == int(resumed.step) == 7
    assert any("resumed from" in line and "at step 5 (phase boundary)" in line for line in lines), lines
    for a, b in zip(leaves(straight), leaves(resumed)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # phase 1 logs CE only, phase 2 CE + BAL; the learning rate follows each phase's schedule
    assert [sorted(k for k in m if k.startswith("loss_")) for _, m in history] == \
        [["loss_ce"]] * 3 + [["loss_bal", "loss_ce"]] * 4
    np.testing.assert_allclose([m["learning_rate"] for _, m in history],
                               [0.05, 0.05, 0.05, 0.02, 0.015, 0.01, 0.005], rtol=1e-6)
    assert [m["loss"] for _, m in resumed_history] == [m["loss"] for _, m in history][5:]
    # the checkpoints record their phase
    saved = checkpointing.Checkpoints(str(tmp_path / "resumed" / "checkpoints"))
    assert saved.restore(resumed, 7)[1]["phase"] == "boundary" and saved.restore(resumed, 2)[1]["phase"] == "warm"
