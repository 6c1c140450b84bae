"""Test-wide settings: float64 JAX so that comparisons with the NumPy float64 references are tight; a
persistent XLA compilation cache so that the many identical train/eval steps the tests compile (resume runs,
CLI subprocesses, which inherit the environment) are compiled once per machine instead of once per call; and
the CPU platform (the tests' devices; with libtpu installed, CI's case, jax would otherwise probe for a TPU in
every process; the compile-only TPU topologies do not need the platform)."""
import os
import tempfile

os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "semeda_jax_test_xla_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402  (after the cache settings, which jax reads at import)
import numpy as np  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_enable_x64", True)


# The slowest test files (training runs, subprocesses), longest first. With `-n 2 --dist loadfile` and
# --no-loadscope-reorder (pyproject.toml) the workers take files in collection order, so these start first and
# the many quick files fill in behind them, instead of one slow file ending the run while the other worker idles.
SLOW_FILES_FIRST = ("test_relationnet.py", "test_configs.py", "test_end_to_end.py", "test_multiprocess.py",
                    "test_guidance.py", "test_parallel.py", "test_models.py", "test_preemption.py",
                    "test_fault_runs.py", "test_protocol.py", "test_similarity.py")


def pytest_collection_modifyitems(items):
    def rank(item):
        name = item.path.name
        return SLOW_FILES_FIRST.index(name) if name in SLOW_FILES_FIRST else len(SLOW_FILES_FIRST)

    items.sort(key=rank)  # stable: the order inside each file and among the other files is kept


@pytest.fixture
def rng():
    """A fresh, seeded NumPy generator per test (tests stay independent of their order)."""
    return np.random.default_rng(0)


@pytest.fixture
def float32_jax():
    """Training code runs in float32, as on an accelerator (x64 is on for the math tests). Test files of training
    runs use it for every test: `pytestmark = pytest.mark.usefixtures("float32_jax")`."""
    jax.config.update("jax_enable_x64", False)
    yield
    jax.config.update("jax_enable_x64", True)


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    """A small synthetic VOC dataset: 7 train / 3 val images of 48x64, 6 classes, void width 3, seed 5."""
    from semeda_jax import data
    root = tmp_path_factory.mktemp("synth") / "voc"
    return data.write_synthetic_voc(root, num_train=7, num_val=3, image_size=(48, 64), num_classes=6, void_width=3,
                                    seed=5, verbose=False)
