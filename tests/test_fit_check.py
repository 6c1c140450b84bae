"""The fit check at the start of a training run (train.compiled_within): on GPU and TPU the step is compiled
ahead of time, checked against the device's memory limit (train.device_memory_limit) and then used for the
steps. Here, on CPU, the limit is injected: a limit below the step's need fails before the first step with one
line; a limit above it trains exactly as without the check, through the compiled step only (the jitted one never
compiles); on CPU itself the check is skipped."""
import jax
import numpy as np
import pytest

from configs import demo
from semeda_jax import checkpointing, parallel, stages, train
from semeda_jax.validation import ConfigError

pytestmark = pytest.mark.usefixtures("float32_jax")
MIB = 2 ** 20


def smoke_config(data_root):
    config = demo.get_config("smoke")
    config.dataset.root = data_root
    config.loss = "ce"
    config.train.update(steps=3, log_every=1, eval_every=100, checkpoint_every=100)
    return config


@pytest.fixture
def jitted_steps(monkeypatch):
    """The jitted steps the runs build (to see whether they compiled)."""
    built = []

    def jit_train_step(*args, **kwargs):
        built.append(original(*args, **kwargs))
        return built[-1]

    original = train.jit_train_step
    monkeypatch.setattr(train, "jit_train_step", jit_train_step)
    return built


def test_a_step_over_the_limit_fails_before_the_first_step(tmp_path, monkeypatch):
    monkeypatch.setattr(train, "device_memory_limit", lambda mesh: MIB)
    lines = []
    with pytest.raises(ConfigError) as error:
        stages.run_train(smoke_config(str(tmp_path / "data")), str(tmp_path / "run"), log=lines.append)
    message = str(error.value)
    assert "\n" not in message and message.startswith(
        "the train step (config.loss 'ce', config.data.batch_size 4, config.data.crop_size (32, 32)) does not fit: "
        "it needs ") and message.endswith(" GiB per device, the device has 0.0009766 GiB; lower the batch or crop "
                                          "size, or set config.train.grad_accum_steps or config.mixed_precision")
    need = float(message.split("it needs ")[1].split(" GiB")[0])
    assert need > 1 / 1024
    assert not any(line.startswith("[train] step") for line in lines), lines
    assert checkpointing.Checkpoints(str(tmp_path / "run" / "checkpoints")).latest_step() is None


def test_a_step_within_the_limit_trains_as_without_the_check(tmp_path, monkeypatch, jitted_steps):
    config = smoke_config(str(tmp_path / "data"))
    unchecked, _ = stages.run_train(config, str(tmp_path / "unchecked"), log=lambda line: None)
    assert jitted_steps[-1]._cache_size() == 1  # on CPU: no check, the jitted step compiled on the first call
    monkeypatch.setattr(train, "device_memory_limit", lambda mesh: 2 ** 40)
    checked, _ = stages.run_train(config, str(tmp_path / "checked"), log=lambda line: None)
    assert jitted_steps[-1]._cache_size() == 0  # the ahead-of-time executable ran every step
    assert int(checked.step) == int(unchecked.step) == 3
    for a, b in zip(*(jax.tree_util.tree_leaves((s.params, s.batch_stats, s.opt_state)) for s in (unchecked, checked))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_no_limit_on_cpu():
    assert jax.default_backend() == "cpu"
    assert train.device_memory_limit(parallel.make_mesh(demo.get_config("smoke"))) is None
