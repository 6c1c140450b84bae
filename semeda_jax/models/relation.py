"""RelationNet's relation module (RelationNet §II-A-2, Eq. 1, SPEC.md 3(c)): a left-right bidirectional GRU over
the rows of the backbone features, followed by an up-down bidirectional GRU over the columns of its output;
and RelationNet's head (RelationHead, HEADS["relation"]): the module, then the classifier.

GRU variant: flax's nn.GRUCell (gate order r, z, n; only the candidate's recurrent term has its own bias):
    r  = sigmoid(x W_ir + b_ir + h W_hr)
    z  = sigmoid(x W_iz + b_iz + h W_hz)
    n  = tanh(x W_in + b_in + r * (h W_hn + b_hn))
    h' = (1 - z) * n + z * h
Every scan starts from h = 0 at the border it leaves from. The input projections x W_i + b_i of a whole stage are
one matmul before the scan; each step of the `jax.lax.scan` only does h W_h, for both directions at once (the
backward direction runs on the reversed sequence, stacked with the forward one): W sequential steps for the row
stage, H for the column stage. A batch-sharded input stays sharded (every row or column is one sample's).

The paper gives neither the hidden size nor the merge of the two directions; ours (module fields):
  merge="concat" (default): [forward, backward] -> 2h channels, as ReNet's image sweeps and torch's
      bidirectional GRU do. Concatenation keeps both directions' information; a 1x1 projection after it would be
      redundant, since the next layer that reads it (the column GRU's input weights, then the classifier's or
      the similarity subnet's 1x1) is already a learned linear map of the concatenation.
  merge="sum": forward + backward -> h channels, half the width (a tied version of that linear map), for
      cheaper heads.
  hidden_size=256 (default): per direction and stage, so "concat" gives 512 output channels, the width of
      common segmentation heads (DeepLab's ASPP is 256, PSPNet's 512). A stage has 2 * 3h(Cin + h + 1) + 2h
      parameters; on ResNet-38's 4096 output channels the row stage is ~6.7M parameters at h = 256, and the
      recurrent matmuls, the only sequential part, are [2, B*H (rows) or B*W (columns), h] x [h, 3h].
Parameters and the recurrence are float32 (float64 in float64 tests); the input projections use `dtype`.

On a constant image the output is NOT constant: each scan starts from 0 at a border, so a state depends on how
many steps it has taken. What holds exactly: the row stage gives the same output in every row, each of its
directions' states depending only on the distance to the border its scan starts from (extending the image on
the opposite side leaves it unchanged); so the full output at (i, j) depends only on (i, H-1-i, j, W-1-j), and
adding rows at the bottom keeps the downward column states and moves the upward ones down with the rows.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from semeda_jax.models.deeplab import classifier

RELATION_MERGES = ("concat", "sum")


def orthonormal_columns(a: jax.Array) -> jax.Array:
    """a [N,h,h] -> Q [N,h,h]: Gram-Schmidt (twice per column) on a's columns, i.e. the Q of a = QR with a
    positive diagonal of R. Matmuls only: XLA:CPU's LAPACK QR call hangs inside a large init program."""
    size = a.shape[-1]

    def column(j, q):
        prev = q * (jnp.arange(size) < j)  # the columns done so far, the others zeroed
        v = lax.dynamic_index_in_dim(a, j, axis=2, keepdims=False)
        for _ in range(2):  # re-orthogonalise once: float32 rounding
            v = v - jnp.einsum("nij,nj->ni", prev, jnp.einsum("nij,ni->nj", prev, v))
        v = v / jnp.linalg.norm(v, axis=-1, keepdims=True)
        return lax.dynamic_update_index_in_dim(q, v, j, axis=2)

    return lax.fori_loop(0, size, column, jnp.zeros_like(a))


def _recurrent_init(key, shape, dtype=jnp.float32):
    """[2, h, 3h]: an orthogonal [h, h] matrix per direction and gate (nn.GRUCell's recurrent initialisation),
    the Q of the QR of a Gaussian matrix with R's diagonal positive (uniformly distributed orthogonal matrices)."""
    directions, hidden, _ = shape
    q = orthonormal_columns(jax.random.normal(key, (directions * 3, hidden, hidden), dtype))
    return q.reshape(directions, 3, hidden, hidden).transpose(0, 2, 1, 3).reshape(shape)


def bidirectional_gru(x: jax.Array, params: dict, axis: int) -> jax.Array:
    """Two GRUs (flax GRUCell equations, module docstring) scanned along `axis` of x, each from h = 0.

    x [B,H,W,C]; axis 1 (down the columns) or 2 (along the rows); params {"input_kernel" [2,C,3h],
    "input_bias" [2,3h], "hidden_kernel" [2,h,3h], "hidden_bias" [2,h]} with direction 0 scanning in increasing
    index order (left->right, top->bottom) and 1 in decreasing order, gates (r, z, n) along the 3h axis.
    -> states [2,B,H,W,h] in the recurrence dtype (float32, or float64 for float64 inputs).
    """
    if axis not in (1, 2):
        raise ValueError(f"bidirectional_gru: axis must be 1 (columns) or 2 (rows), got {axis}")
    hidden = params["hidden_kernel"].shape[1]
    rec_dtype = jnp.promote_types(x.dtype, jnp.float32)
    kernel_i = params["input_kernel"].astype(x.dtype)
    projected = jnp.einsum("bhwc,dck->dbhwk", x, kernel_i).astype(rec_dtype) + params["input_bias"][:, None, None, None]
    sequence = jnp.moveaxis(projected, axis + 1, 0)  # [T,2,B,N,3h]: T along `axis`, N the other spatial axis
    length, _, batch, other, _ = sequence.shape
    sequence = sequence.reshape(length, 2, batch * other, 3 * hidden)
    sequence = jnp.stack([sequence[:, 0], sequence[::-1, 1]], axis=1)  # direction 1 runs on the reversed sequence
    kernel_h = params["hidden_kernel"].astype(rec_dtype)
    bias_hn = params["hidden_bias"].astype(rec_dtype)[:, None]  # [2,1,h]

    def step(h, inputs):  # h [2,B*N,h], inputs [2,B*N,3h]
        recurrent = jnp.einsum("dnh,dhk->dnk", h, kernel_h)
        x_r, x_z, x_n = jnp.split(inputs, 3, axis=-1)
        h_r, h_z, h_n = jnp.split(recurrent, 3, axis=-1)
        r = jax.nn.sigmoid(x_r + h_r)
        z = jax.nn.sigmoid(x_z + h_z)
        n = jnp.tanh(x_n + r * (h_n + bias_hn))
        h = (1 - z) * n + z * h
        return h, h

    _, states = jax.lax.scan(step, jnp.zeros((2, batch * other, hidden), rec_dtype), sequence)
    states = jnp.stack([states[:, 0], states[::-1, 1]], axis=1).reshape(length, 2, batch, other, hidden)
    return jnp.moveaxis(states, 0, axis + 1)


def merge_directions(states: jax.Array, merge: str) -> jax.Array:
    """states [2,B,H,W,h] -> [B,H,W,2h] ("concat": forward first) or [B,H,W,h] ("sum")."""
    if merge == "concat":
        return jnp.concatenate([states[0], states[1]], axis=-1)
    if merge == "sum":
        return states[0] + states[1]
    raise ValueError(f"relation_merge: unknown {merge!r}; valid merges are {list(RELATION_MERGES)}")


class BidirectionalGRU(nn.Module):
    """The two GRUs of one stage, scanned along `axis` (2: rows, 1: columns); see bidirectional_gru.

    Params {"input_kernel" [2,Cin,3h], "input_bias" [2,3h], "hidden_kernel" [2,h,3h], "hidden_bias" [2,h]}
    float32, initialised as nn.GRUCell (lecun-normal input kernels, orthogonal recurrent kernels, zero biases).
    x [B,H,W,Cin] -> states [2,B,H,W,h].
    """
    hidden_size: int
    axis: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = self.hidden_size
        input_init = nn.initializers.lecun_normal(in_axis=-2, out_axis=-1, batch_axis=(0,))
        params = {"input_kernel": self.param("input_kernel", input_init, (2, x.shape[-1], 3 * h), jnp.float32),
                  "input_bias": self.param("input_bias", nn.initializers.zeros, (2, 3 * h), jnp.float32),
                  "hidden_kernel": self.param("hidden_kernel", _recurrent_init, (2, h, 3 * h), jnp.float32),
                  "hidden_bias": self.param("hidden_bias", nn.initializers.zeros, (2, h), jnp.float32)}
        return bidirectional_gru(x.astype(self.dtype), params, self.axis)


class RelationModule(nn.Module):
    """Row BiGRU then column BiGRU (see the module docstring for the equations and the choices).

    Submodules "rows" and "columns" (BidirectionalGRU; the columns' input width is the merged row width).
    x [B,H,W,C] -> [B,H,W,2*hidden_size] ("concat") or [B,H,W,hidden_size] ("sum") in `dtype`.
    """
    hidden_size: int = 256
    merge: str = "concat"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        rows = BidirectionalGRU(self.hidden_size, axis=2, dtype=self.dtype, name="rows")(x)
        rows = merge_directions(rows, self.merge).astype(self.dtype)
        columns = BidirectionalGRU(self.hidden_size, axis=1, dtype=self.dtype, name="columns")(rows)
        return merge_directions(columns, self.merge).astype(self.dtype)


class RelationHead(nn.Module):
    """RelationNet's classification subnet (Fig. 2): the relation module on the backbone's "out" features
    (skipped with relation=False: ResNet-38 + classifier, Table I's baseline rows), then a 1x1 classifier with
    bias (models/deeplab.classifier; the paper names no further layer).

    features {"out": [B,h,w,C], ...} -> (logits [B,h,w,num_classes] float32, {"classifier_input": [B,h,w,D]}):
    the second item is the features the classifier read (D = 2 hidden "concat", hidden "sum", C without the
    relation module), shared with the auxiliary heads (the similarity subnet reads the relation module's output,
    RelationNet §II-A-3). hidden = relation_hidden, or 4 * base_width (256 at the paper's width) when None.
    Params: {"relation": {"rows", "columns"}, "classifier"} at the model's top level (the head shares its scope).
    """
    num_classes: int
    base_width: int = 64
    relation: bool = True
    relation_hidden: int | None = None
    relation_merge: str = "concat"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, features: dict, train: bool = False) -> tuple[jax.Array, dict]:
        x = features["out"]
        if self.relation:
            x = RelationModule(self.relation_hidden or 4 * self.base_width, self.relation_merge, dtype=self.dtype,
                               name="relation")(x)
        return classifier(self.num_classes, self.dtype, x), {"classifier_input": x}
