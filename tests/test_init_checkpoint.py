"""config.train.init_checkpoint: a run starts from another run's weights; with config.train.init_partial the other
run's model may differ (the RelationNet model without its relation module and similarity subnet, what the
pre-trained-backbone arms of benchmarks/relationnet_protocol.py start from)."""
import jax
import numpy as np
import pytest
from flax import traverse_util

from benchmarks import relationnet_protocol
from fresh_checkpoint import save_fresh_checkpoint
from semeda_jax import parallel, train
from semeda_jax.validation import ConfigError


def saved_model(config, workdir, fingerprint=True):
    """save_fresh_checkpoint's variables, flat."""
    return traverse_util.flatten_dict(save_fresh_checkpoint(config, workdir, fingerprint=fingerprint))


def fresh_variables(config):
    mesh = parallel.make_mesh(config)
    model = train.build_segmentation_model(config, config.dataset.num_classes)
    state = train.create_train_state(config, model, jax.random.PRNGKey(0), mesh)
    return mesh, {"params": state.params, "batch_stats": state.batch_stats}


def test_init_partial_loads_what_matches_and_keeps_the_rest_fresh(tmp_path):
    backbone_only = relationnet_protocol.arm_config("ohem", 0, tiny=True)  # ResNet-38 + classifier
    saved = saved_model(backbone_only, str(tmp_path))
    config = relationnet_protocol.arm_config("relation", 0, tiny=True)  # + relation module, similarity subnet
    config.train.update(init_checkpoint=str(tmp_path), init_partial=True)
    mesh, like = fresh_variables(config)
    lines = []
    loaded = traverse_util.flatten_dict(train.load_init_checkpoint(config, mesh, lines.append, like))
    fresh = traverse_util.flatten_dict(like)
    assert loaded.keys() == fresh.keys()
    from_checkpoint = [key for key in fresh if key in saved and saved[key].shape == fresh[key].shape]
    kept = [key for key in fresh if key not in from_checkpoint]
    assert any(key[1] == "relation" for key in kept) and any(key[1] == "classifier" for key in kept)
    assert len(from_checkpoint) > len(kept) > 0
    for key in from_checkpoint:
        np.testing.assert_array_equal(loaded[key], saved[key])
    for key in kept:
        np.testing.assert_array_equal(loaded[key], fresh[key])
    assert f"{len(from_checkpoint)} of {len(fresh)} arrays from the checkpoint" in lines[-1]
    assert "params/relation" in lines[-1] and "params/classifier" in lines[-1]

    config.train.init_partial = False  # the default: another model's checkpoint is refused, naming a field
    with pytest.raises(Exception, match="model.relation|do not fit"):
        train.load_init_checkpoint(config, mesh, lines.append, like)


def test_init_partial_errors_name_the_checkpoint(tmp_path):
    config = relationnet_protocol.arm_config("relation", 0, tiny=True)
    config.train.update(init_checkpoint=str(tmp_path), init_partial=True)
    mesh, like = fresh_variables(config)
    saved_model(config, str(tmp_path), fingerprint=False)
    with pytest.raises(ConfigError, match=rf"{tmp_path}/checkpoints records no model fields"):
        train.load_init_checkpoint(config, mesh, print, like)
    unrelated = {"params": {"other": {"kernel": np.zeros((2, 2), np.float32)}}, "batch_stats": {}}
    with pytest.raises(ConfigError, match="no array of ROOT matches"):
        train.shared_variables(unrelated, traverse_util.unflatten_dict(
            {key: value for key, value in traverse_util.flatten_dict(like).items()}), "ROOT", print)


def test_random_backbone_warning_only_without_init_checkpoint_and_naming_the_relation_cost():
    lines = []
    config = relationnet_protocol.arm_config("ohem_scl", 0, tiny=True)
    assert train.load_pretrained_backbone(config, "state", lines.append) == "state"
    assert lines == ["[train] warning: config.model.pretrained is empty: the backbone starts from random weights"]
    relation = relationnet_protocol.arm_config("relation", 0, tiny=True)
    train.load_pretrained_backbone(relation, "state", lines.append)
    assert lines[-1].endswith(train.RELATION_FROM_SCRATCH) and "pre-trained backbone" in lines[-1]
    relation.train.init_checkpoint = "/a/run"  # its weights replace the random ones next: no warning
    train.load_pretrained_backbone(relation, "state", lines.append)
    assert len(lines) == 2
