"""The relation module (models/relation.py): the GRU scan in all four directions against a NumPy float64 GRU
written out from the equations (and against flax's nn.GRUCell, whose variant it claims), the whole module
against the NumPy composition for both merges, what holds exactly on a constant image given the h = 0 boundary
starts, shapes and parameter counts; the "relation" head (module + classifier) and the "relationnet" model's
field routing."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from semeda_jax.models import build_model
from semeda_jax.models.relation import RelationHead, RelationModule, bidirectional_gru


scan = jax.jit(bidirectional_gru, static_argnums=2)


def sigmoid(v):
    return 1 / (1 + np.exp(-v))


def numpy_gru(sequence, params, direction):
    """sequence [T,C] float64 -> states [T,h], one step at a time from h = 0 (flax GRUCell equations), the
    sequence read backwards for direction 1 (states still indexed by position)."""
    w_i, b_i = params["input_kernel"][direction], params["input_bias"][direction]
    w_h, b_hn = params["hidden_kernel"][direction], params["hidden_bias"][direction]
    hidden = w_h.shape[0]
    w_ir, w_iz, w_in = np.split(w_i, 3, axis=-1)
    b_ir, b_iz, b_in = np.split(b_i, 3)
    w_hr, w_hz, w_hn = np.split(w_h, 3, axis=-1)
    order = range(len(sequence)) if direction == 0 else reversed(range(len(sequence)))
    h = np.zeros(hidden)
    states = np.zeros((len(sequence), hidden))
    for t in order:
        x = sequence[t]
        r = sigmoid(x @ w_ir + b_ir + h @ w_hr)
        z = sigmoid(x @ w_iz + b_iz + h @ w_hz)
        n = np.tanh(x @ w_in + b_in + r * (h @ w_hn + b_hn))
        h = (1 - z) * n + z * h
        states[t] = h
    return states


def numpy_bidirectional(x, params, axis):
    """x [B,H,W,C] -> [2,B,H,W,h]: numpy_gru along every row (axis 2) or column (axis 1), both directions."""
    batch, height, width, _ = x.shape
    out = np.zeros((2, batch, height, width, params["hidden_kernel"].shape[1]))
    for d in range(2):
        for b in range(batch):
            if axis == 2:
                for i in range(height):
                    out[d, b, i] = numpy_gru(x[b, i], params, d)
            else:
                for j in range(width):
                    out[d, b, :, j] = numpy_gru(x[b, :, j], params, d)
    return out


def random_stage(rng, in_features, hidden):
    """Random parameters with nonzero biases (the initialisation's are zero) and both directions different."""
    return {"input_kernel": rng.normal(0, 0.6, (2, in_features, 3 * hidden)),
            "input_bias": rng.normal(0, 0.5, (2, 3 * hidden)),
            "hidden_kernel": rng.normal(0, 0.6, (2, hidden, 3 * hidden)),
            "hidden_bias": rng.normal(0, 0.5, (2, hidden))}


def merge(states, how):
    return np.concatenate([states[0], states[1]], -1) if how == "concat" else states[0] + states[1]


@pytest.mark.parametrize("axis", [2, 1], ids=["rows", "columns"])
def test_scan_in_both_directions_matches_the_numpy_gru(axis, rng):
    x = rng.normal(size=(2, 4, 5, 3))
    params = random_stage(rng, 3, 4)
    states = scan(jnp.asarray(x), jax.tree.map(jnp.asarray, params), axis)
    expected = numpy_bidirectional(x, params, axis)
    assert states.shape == (2, 2, 4, 5, 4) and states.dtype == jnp.float64
    # direction 0: left->right (rows) / top->bottom (columns); 1: right->left / bottom->top
    np.testing.assert_allclose(np.asarray(states), expected, rtol=1e-12, atol=1e-12)


def test_gru_variant_is_flax_gru_cell(rng):
    """The NumPy reference (hence the scan) is nn.GRUCell with our fused kernels split into its per-gate Denses."""
    params = random_stage(rng, 3, 4)
    d = 1
    w_i, b_i, w_h = (np.split(params[k][d], 3, axis=-1) for k in ("input_kernel", "input_bias", "hidden_kernel"))
    cell_params = {"ir": {"kernel": w_i[0], "bias": b_i[0]}, "iz": {"kernel": w_i[1], "bias": b_i[1]},
                   "in": {"kernel": w_i[2], "bias": b_i[2]}, "hr": {"kernel": w_h[0]}, "hz": {"kernel": w_h[1]},
                   "hn": {"kernel": w_h[2], "bias": params["hidden_bias"][d]}}
    cell = nn.GRUCell(features=4, dtype=jnp.float64, param_dtype=jnp.float64)
    sequence = rng.normal(size=(6, 3))
    h = jnp.zeros(4)
    flax_states = []
    for x in sequence[::-1]:  # direction 1 reads the sequence backwards
        h, _ = cell.apply({"params": cell_params}, h, jnp.asarray(x))
        flax_states.append(np.asarray(h))
    np.testing.assert_allclose(np.stack(flax_states[::-1]), numpy_gru(sequence, params, d), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("how", ["concat", "sum"])
def test_module_is_the_row_then_column_composition(how, rng):
    x = rng.normal(size=(2, 4, 5, 3))
    module = RelationModule(hidden_size=4, merge=how, dtype=jnp.float64)
    variables = jax.eval_shape(module.init, jax.random.PRNGKey(0), jnp.asarray(x))
    merged = 8 if how == "concat" else 4
    params = {"rows": random_stage(rng, 3, 4), "columns": random_stage(rng, merged, 4)}
    assert jax.tree.map(np.shape, variables["params"]) == jax.tree.map(np.shape, params)
    out = jax.jit(module.apply)({"params": params}, jnp.asarray(x))
    rows = merge(numpy_bidirectional(x, params["rows"], 2), how)
    expected = merge(numpy_bidirectional(rows, params["columns"], 1), how)
    assert out.shape == (2, 4, 5, merged) and out.dtype == jnp.float64
    np.testing.assert_allclose(np.asarray(out), expected, rtol=1e-12, atol=1e-12)


def test_constant_image_exact_properties(rng):
    """Every scan starts from h = 0 at a border, so a constant image does not give a constant output; what
    holds exactly: the row stage's output is the same in every row, and each direction's state depends only on
    the distance to the border its scan starts from (extending the image on the opposite side changes nothing,
    extending it on the starting side shifts the state by the extension)."""
    value = rng.normal(size=3)
    params = {"rows": jax.tree.map(jnp.asarray, random_stage(rng, 3, 4)),
              "columns": jax.tree.map(jnp.asarray, random_stage(rng, 8, 4))}
    image = lambda height, width: jnp.broadcast_to(jnp.asarray(value), (1, height, width, 3))

    rows = scan(image(4, 5), params["rows"], 2)  # [2,1,4,5,h]
    np.testing.assert_allclose(np.asarray(rows), np.broadcast_to(rows[:, :, :1], rows.shape), rtol=0, atol=1e-14)
    wider = scan(image(4, 8), params["rows"], 2)  # 3 more columns on the right
    np.testing.assert_allclose(np.asarray(wider[0, :, :, :5]), np.asarray(rows[0]), rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(np.asarray(wider[1, :, :, 3:]), np.asarray(rows[1]), rtol=1e-13, atol=1e-14)
    assert not np.allclose(rows[0, 0, 0, 0], rows[0, 0, 0, -1])  # not constant along the row

    # the whole module (concat: down half, then up half): 2 more rows at the bottom leave the row stage as it
    # is; the downward states keep their rows, the upward ones move down by 2
    module = RelationModule(hidden_size=4, merge="concat", dtype=jnp.float64)
    out, taller = (jax.jit(module.apply)({"params": params}, image(height, 5)) for height in (4, 6))
    np.testing.assert_allclose(np.asarray(taller[:, :4, :, :4]), np.asarray(out[..., :4]), rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(np.asarray(taller[:, 2:, :, 4:]), np.asarray(out[..., 4:]), rtol=1e-13, atol=1e-14)
    assert not np.allclose(out[0, 0, 0], out[0, -1, 0])  # not constant down a column


@pytest.mark.parametrize("how,merged", [("concat", 12), ("sum", 6)])
def test_shapes_and_parameter_count(how, merged):
    channels, hidden = 5, 6
    module = RelationModule(hidden_size=hidden, merge=how)
    x = jnp.zeros((2, 3, 7, channels), jnp.float32)
    variables = jax.eval_shape(module.init, jax.random.PRNGKey(0), x)
    out = jax.eval_shape(module.apply, variables, x)
    assert out.shape == (2, 3, 7, merged) and out.dtype == jnp.float32
    count = lambda tree: sum(np.prod(leaf.shape) for leaf in jax.tree.leaves(tree))
    # each direction of a stage has exactly nn.GRUCell's parameters for its input width
    cell = lambda width: count(jax.eval_shape(nn.GRUCell(features=hidden).init, jax.random.PRNGKey(0),
                                              jnp.zeros((1, hidden)), jnp.zeros((1, width))))
    per_direction = 3 * hidden * (channels + hidden + 1) + hidden
    assert count(variables["params"]["rows"]) == 2 * cell(channels) == 2 * per_direction
    assert count(variables["params"]["columns"]) == 2 * cell(merged)


def test_initialisation_is_gru_cell_like():
    """Zero biases, orthogonal recurrent block per direction and gate, lecun-normal input kernels."""
    hidden = 3
    params = jax.jit(RelationModule(hidden_size=hidden).init)(jax.random.PRNGKey(0), jnp.zeros((1, 2, 2, 40)))["params"]
    kernel = np.asarray(params["rows"]["hidden_kernel"])
    for d in range(2):
        for gate in range(3):
            block = kernel[d, :, gate * hidden:(gate + 1) * hidden]
            np.testing.assert_allclose(block.T @ block, np.eye(hidden), atol=1e-5)
    assert not np.allclose(kernel[0], kernel[1])
    assert not np.any(params["columns"]["input_bias"]) and not np.any(params["rows"]["hidden_bias"])
    assert 0.1 < np.std(params["rows"]["input_kernel"]) * np.sqrt(40) < 2.0  # ~1 for lecun-normal, fan-in 40


def test_orthonormal_columns_is_the_q_of_a_positive_diagonal_qr(rng):
    """Against NumPy's float64 QR (LAPACK) with the sign fix, on random and ill-conditioned matrices."""
    from semeda_jax.models.relation import orthonormal_columns
    a = rng.normal(size=(3, 7, 7))
    a[2, :, 6] = a[2, :, 5] + 1e-3 * rng.normal(size=7)  # two nearly parallel columns
    q, r = np.linalg.qr(a)
    q = q * np.sign(np.diagonal(r, axis1=-2, axis2=-1))[:, None, :]
    np.testing.assert_allclose(np.asarray(jax.jit(orthonormal_columns)(jnp.asarray(a))), q, atol=1e-9)


def test_unknown_merge_names_the_valid_ones():
    with pytest.raises(ValueError, match=r"relation_merge: unknown 'max'; valid merges are \['concat', 'sum'\]"):
        RelationModule(hidden_size=2, merge="max").init(jax.random.PRNGKey(0), jnp.zeros((1, 2, 2, 3)))


def test_head_is_the_module_then_the_classifier_and_shares_its_input(rng):
    features = {"out": jnp.asarray(rng.normal(size=(2, 3, 4, 6))), "low_level": jnp.zeros((2, 6, 8, 2))}
    head = RelationHead(num_classes=3, relation_hidden=4, dtype=jnp.float64)
    shapes = jax.eval_shape(head.init, jax.random.PRNGKey(0), features)["params"]
    params = jax.tree.map(lambda s: jnp.asarray(rng.normal(0, 0.5, s.shape)), shapes)
    logits, shared = jax.jit(head.apply)({"params": params}, features)
    relation = RelationModule(hidden_size=4, dtype=jnp.float64).apply({"params": params["relation"]}, features["out"])
    np.testing.assert_allclose(np.asarray(shared["classifier_input"]), np.asarray(relation), rtol=1e-12)
    expected = np.asarray(relation) @ np.asarray(params["classifier"]["kernel"][0, 0]) + params["classifier"]["bias"]
    assert logits.shape == (2, 3, 4, 3) and logits.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(logits), expected, rtol=1e-5, atol=1e-6)
    plain = RelationHead(num_classes=3, relation=False)  # Table I's ResNet-38 rows: the classifier on "out"
    plain_params = jax.eval_shape(plain.init, jax.random.PRNGKey(0), features)["params"]
    assert set(plain_params) == {"classifier"} and plain_params["classifier"]["kernel"].shape == (1, 1, 6, 3)


@pytest.mark.parametrize("fields,relation_in,classifier_in", [
    (dict(), 128, 16),                                       # hidden 4 * base_width = 8 per direction, concat
    (dict(relation_hidden=5, relation_merge="sum"), 128, 5),
    (dict(relation=False), None, 128),
])
def test_relationnet_routes_its_fields_at_an_odd_size(fields, relation_in, classifier_in):
    model = build_model("relationnet", num_classes=3, base_width=2, aux_heads="similarity", **fields)
    x = jnp.zeros((2, 33, 35, 3))
    variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)
    outputs = jax.eval_shape(model.apply, variables, x)
    assert {k: v.shape for k, v in outputs.items()} == {"logits": (2, 5, 5, 3), "pair_logits": (2, 5, 5, 9)}
    params = variables["params"]
    assert "offset" in params["backbone"]["b6"]["conv_branch2b1"]  # deformable by default
    if relation_in is None:
        assert "relation" not in params
    else:
        assert params["relation"]["rows"]["input_kernel"].shape[1] == relation_in
    assert params["classifier"]["kernel"].shape == (1, 1, classifier_in, 3)
    # the similarity subnet reads what the classifier reads
    assert params["aux_heads_0"]["anchor"]["kernel"].shape == (1, 1, classifier_in, 8)


def test_a_field_of_an_absent_component_is_an_error():
    with pytest.raises(ValueError, match=r"unknown argument\(s\) \['similarity_width'\]"):
        build_model("relationnet", num_classes=3, similarity_width=4)
    with pytest.raises(ValueError, match=r"unknown argument\(s\) \['relation_hidden'\]"):
        build_model("deeplab_v3", num_classes=3, relation_hidden=4)
