"""Stage 1 of Algorithm 1: g_phi learns the semantic edges of synthetic masks to a stated edge F-score."""
import itertools

import jax
import numpy as np
import pytest

import references as ref
from semeda_jax.data import generate_scene
from semeda_jax.edge_pretrain import edge_f_score, edge_predictions, pretrain_edge_net
from semeda_jax.losses import init_edge_net
from semeda_jax.preemption import Preempted

NUM_CLASSES = 8
# Measured: 0.9997 after 400 steps on the demo data; this test's budget (120 steps of 8 crops 48x48) reached
# 0.996 when the floor was set.
EDGE_F_SCORE_FLOOR = 0.97


def synthetic_masks(seed, count, size=(48, 48)):
    rng = np.random.default_rng(seed)
    return np.stack([generate_scene(rng, size, NUM_CLASSES, void_width=3)[1] for _ in range(count)]).astype(np.int32)


def test_edge_f_score_matches_a_numpy_count():
    labels = synthetic_masks(3, 4)
    params = init_edge_net(jax.random.PRNGKey(1), NUM_CLASSES)
    predicted = np.asarray(edge_predictions(params, labels, NUM_CLASSES)).astype(bool)
    truth = ref.semantic_edges(labels)
    valid = labels != 255
    tp, fp, fn = (np.sum(a & b & valid) for a, b in ((predicted, truth), (predicted, ~truth), (~predicted, truth)))
    scores = edge_f_score(params, [labels[:1], labels[1:]], NUM_CLASSES)  # counts add up over batches
    np.testing.assert_allclose(scores["edge_precision"], tp / max(tp + fp, 1))
    np.testing.assert_allclose(scores["edge_recall"], tp / max(tp + fn, 1))
    np.testing.assert_allclose(scores["edge_f_score"], 2 * tp / (2 * tp + fp + fn))


def test_pretraining_reaches_the_edge_f_score_floor():
    val_labels = synthetic_masks(0, 16)
    train_rng = np.random.default_rng(1)

    def batches():
        while True:
            yield np.stack([generate_scene(train_rng, (48, 48), NUM_CLASSES, void_width=3)[1]
                            for _ in range(8)]).astype(np.int32)

    _, scores = pretrain_edge_net(batches(), np.split(val_labels, 4), num_classes=NUM_CLASSES, steps=120, learning_rate=1e-2,
                                  seed=0, log=lambda line: None)
    assert scores["edge_f_score"] >= EDGE_F_SCORE_FLOOR, scores


def test_stopped_pretraining_resumes_bit_for_bit():
    """A stop before step 7 saves the state of step 6 (besides the periodic save of step 4) and raises
    Preempted; resumed from that state and the stream from batch 6, g_phi ends where a straight run does."""
    def stream(start):
        for index in itertools.count(start):
            yield synthetic_masks(100 + index, 2, size=(24, 24))

    val = [synthetic_masks(0, 2, size=(24, 24))]
    settings = {"num_classes": NUM_CLASSES, "steps": 10, "learning_rate": 1e-2, "seed": 0, "log": lambda line: None}
    straight, _ = pretrain_edge_net(stream(0), val, **settings)
    saves, calls = {}, itertools.count(1)
    with pytest.raises(Preempted, match="checkpoint saved at step 6"):
        pretrain_edge_net(stream(0), val, save=lambda step, state: saves.update({step: state}), save_every=4,
                          should_stop=lambda: next(calls) == 7, **settings)
    assert sorted(saves) == [4, 6]
    resumed, _ = pretrain_edge_net(stream(6), val, state=saves[6], start_step=6, **settings)
    for a, b in zip(jax.tree_util.tree_leaves(straight), jax.tree_util.tree_leaves(resumed)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
