"""Shared building blocks of the segmentation models: conv, batch norm (frozen or train), conv-BN-ReLU, resize.

Convolutions: `conv()` gives a PointwiseConv (1x1, a matmul) or a SpatialConv (k x k), DepthwiseConv is one filter
per channel; all keep nn.Conv's parameters. 1x1 convs are matmuls on every platform; k x k gradients and depthwise
convs take the CPU kernels of models/cpu_kernels.py when compiled for CPU (where XLA's own are slow) and XLA's
convolutions elsewhere, through its one switch `per_platform`.

All tensors are NHWC, batch first. Parameters are always float32; `dtype` is the compute dtype. With a bfloat16
`dtype` the convolutions compute in bfloat16 and their kernels' and biases' gradients in float32
(`with_f32_param_grad`), so the cross-device sum of a data-parallel gradient, which XLA places right where the
gradient is computed, is float32.

Batch-norm modes (`bn_mode`, one value for a whole model):
  "frozen"  SEMEDA's setting: always normalise with the running statistics (train or not) and never update them.
            The trainer also keeps BN scale/bias fixed, using `frozen_bn_mask` (see its docstring).
  "train"   batch statistics when `train=True` (running averages updated with `momentum`), running averages
            when `train=False`. Under `jax.jit` over a batch sharded on a mesh the batch mean/variance are
            reductions over the GLOBAL batch, i.e. synchronized BN, with no `axis_name` needed.

Statistics groups (`bn_group_size` g, model-wide; None or 0 = the whole global batch): with bn_mode="train" and
train=True, the global batch [B,...] is viewed as [B/g, g, ...] and every group of g consecutive samples is
normalised with its own mean/variance over (g, H, W) (the guidance paper's "sync BN over 8 of 16"). The running
averages are updated with the mean over groups of the group statistics; eval uses the running averages, as
without groups. Group k is samples k*g .. k*g+g-1 of the global batch, i.e. of the data-sharded layout: with g a
divisor of the per-device batch a group never spans two devices. The parameter and batch_stats trees are those of
nn.BatchNorm, so checkpoints and converted weights do not depend on g.

Momentum follows flax's convention: `ra <- momentum * ra + (1 - momentum) * batch_stat`. Our default 0.9 is
torch's `momentum=0.1` (torchvision/timm weights, most PyTorch DeepLab code): running averages settle within
tens of steps, which short runs and demos with bn_mode="train" need. TF DeepLab's `batch_norm_decay` 0.9997
(averages over ~3000 steps) suits long runs only; set `bn_momentum=0.9997` to reproduce it. With "frozen" the
momentum is unused. Epsilon 1e-5 is torchvision's, so mapped torchvision/timm weights reproduce their outputs.
The running variance is updated with the biased batch variance (flax), where torch uses the unbiased one: a
(n-1)/n difference that only matters for tiny batches.

Rematerialisation (`remat`, config.model.remat, applied by the ResNet and Xception backbones to each block):
"none" stores every activation the backward pass needs; "blocks" stores only each block's input and recomputes
the rest of the block in the backward pass (jax.checkpoint's default); a jax.checkpoint_policies name among
REMAT_POLICIES recomputes all but what that policy saves (e.g. "dots_saveable": the matmul outputs, i.e. the
1x1 convs'). The parameter and batch_stats trees, the values and the gradients do not depend on it.

Padding: explicit symmetric `dilation * (k - 1) // 2` on each side, as in torchvision (not TF "SAME", which
pads asymmetrically at stride 2), so mapped torchvision/timm weights give the same features and an input of
size H gives ceil(H / stride) outputs at every stride (513 -> 257 -> 129 -> 65 -> 33, DeepLab's convention).
"""
from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from semeda_jax.models.cpu_kernels import (conv_tapwise_vjp, depthwise_shifted, live_kernel, per_platform,
                                           xla_conv)

BN_MODES = ("frozen", "train")
DEFAULT_BN_MOMENTUM = 0.9
DEFAULT_BN_EPSILON = 1e-5
# jax.checkpoint_policies that `remat` may name besides "none" and "blocks" (see the module docstring).
REMAT_POLICIES = ("dots_saveable", "dots_with_no_batch_dims_saveable")
REMAT_MODES = ("none", "blocks", *REMAT_POLICIES)

# He-normal over fan-out (torchvision's `kaiming_normal_(mode="fan_out", nonlinearity="relu")` for convs).
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def with_f32_param_grad(fn, x: jax.Array, param: jax.Array, dtype: Any) -> jax.Array:
    """fn(x, param) (a conv or matmul with a float32 kernel, a bias add) computed in `dtype`; below float32, the
    parameter's gradient is computed in float32 from the `dtype` values (not `dtype`'s gradient cast up), the
    input's in `dtype`. In float32 (or wider) this is fn(x, param) in `dtype` with its usual gradients."""
    if jnp.finfo(dtype).bits >= jnp.finfo(param.dtype).bits:
        return fn(x.astype(dtype), param.astype(dtype))
    return _f32_param_grad(fn, x.astype(dtype), param)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _f32_param_grad(fn, x: jax.Array, param: jax.Array) -> jax.Array:
    return fn(x, param.astype(x.dtype))


def _f32_param_grad_fwd(fn, x, param):
    return _f32_param_grad(fn, x, param), (x, param)


def _f32_param_grad_bwd(fn, residuals, g):
    x, param = residuals
    x_grad = jax.vjp(lambda x: fn(x, param.astype(x.dtype)), x)[1](g)[0]
    param_grad = jax.vjp(lambda p: fn(x.astype(p.dtype), p), param)[1](g.astype(param.dtype))[0]
    return x_grad, param_grad


_f32_param_grad.defvjp(_f32_param_grad_fwd, _f32_param_grad_bwd)


def check_bn_mode(bn_mode: str) -> None:
    """Raise ValueError unless `bn_mode` is one of BN_MODES."""
    if bn_mode not in BN_MODES:
        raise ValueError(f"bn_mode: unknown {bn_mode!r}; valid modes are {list(BN_MODES)}")


def check_remat(remat: str) -> None:
    """Raise ValueError unless `remat` is one of REMAT_MODES."""
    if remat not in REMAT_MODES:
        raise ValueError(f"remat: unknown {remat!r}; valid values are {list(REMAT_MODES)}")


def remat_block(cls: type[nn.Module], remat: str) -> type[nn.Module]:
    """The block class `cls` (its __call__ is (x, train)) under `remat` (module docstring): cls itself for "none",
    else nn.remat(cls) with that policy; same parameter names, values and gradients."""
    check_remat(remat)
    if remat == "none":
        return cls
    policy = None if remat == "blocks" else getattr(jax.checkpoint_policies, remat)
    return nn.remat(cls, static_argnums=(2,), policy=policy)  # argument 2 (after self, x): the `train` flag


class GroupedBatchNorm(nn.Module):
    """Training-mode batch norm with statistics per group of `group_size` consecutive samples.

    x [B,...,C] (B a multiple of group_size) -> same shape in `dtype`. Variables as nn.BatchNorm: params
    {'scale', 'bias'} [C] float32, batch_stats {'mean', 'var'} [C] float32. Statistics in float32 (or float64
    for float64 input); the variance is the biased E[(x - mean)^2] of each group.
    """
    group_size: int
    momentum: float = DEFAULT_BN_MOMENTUM
    epsilon: float = DEFAULT_BN_EPSILON
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        batch, channels, g = x.shape[0], x.shape[-1], self.group_size
        if batch % g:
            raise ValueError(f"bn_group_size {g} does not divide the batch size {batch}")
        scale = self.param("scale", nn.initializers.ones, (channels,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (channels,), jnp.float32)
        ra_mean = self.variable("batch_stats", "mean", jnp.zeros, (channels,), jnp.float32)
        ra_var = self.variable("batch_stats", "var", jnp.ones, (channels,), jnp.float32)
        groups = x.astype(jnp.promote_types(x.dtype, jnp.float32)).reshape(batch // g, g, *x.shape[1:])
        axes = tuple(range(1, groups.ndim - 1))  # everything but the group and channel axes
        mean = groups.mean(axes, keepdims=True)
        var = jnp.square(groups - mean).mean(axes, keepdims=True)
        if not self.is_initializing():
            ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean.mean(0).reshape(channels)
            ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var.mean(0).reshape(channels)
        y = (groups - mean) * jax.lax.rsqrt(var + self.epsilon) * scale + bias
        return y.reshape(x.shape).astype(self.dtype)


def norm(bn_mode: str, train: bool, *, momentum: float = DEFAULT_BN_MOMENTUM,
         epsilon: float = DEFAULT_BN_EPSILON, dtype: Any = jnp.float32, group_size: int | None = None,
         name: str | None = None) -> nn.Module:
    """A BatchNorm over the channel axis for `bn_mode` ("frozen" or "train"), the `train` flag and the
    statistics group size (None or 0: the whole batch; see the module docstring).

    Params {'scale' [C], 'bias' [C]} float32; batch_stats {'mean' [C], 'var' [C]} float32, whatever the group
    size. Must be called inside a compact method (it creates a submodule named `name`).
    """
    check_bn_mode(bn_mode)
    use_running_average = bn_mode == "frozen" or not train
    if group_size and not use_running_average:
        return GroupedBatchNorm(group_size, momentum=momentum, epsilon=epsilon, dtype=dtype, name=name)
    return nn.BatchNorm(use_running_average=use_running_average, momentum=momentum, epsilon=epsilon,
                        dtype=dtype, param_dtype=jnp.float32, name=name)


class PointwiseConv(nn.Module):
    """A 1x1 conv (stride s: every s-th row and column) as a matmul over channels: nn.Conv's parameters
    ({"kernel" [1,1,Cin,Cout] float32, "bias" [Cout]}, same names, shapes and initialisation) and outputs.

    Why: XLA:CPU computes the kernel gradient of a 1x1 `conv_general_dilated` ~9x slower than the same
    contraction as a dot (2x48x48x256 -> 512: 110 ms vs 12.5 ms), and a ResNet-101 DeepLab has ~70 of them;
    on accelerators a 1x1 conv is this matmul anyway. x [B,H,W,Cin] -> [B,ceil(H/s),ceil(W/s),Cout] in `dtype`.
    """
    features: int
    strides: int = 1
    use_bias: bool = False
    dtype: Any = jnp.float32
    kernel_init: Any = conv_init

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param("kernel", self.kernel_init, (1, 1, x.shape[-1], self.features), jnp.float32)
        if self.strides > 1:
            x = x[:, ::self.strides, ::self.strides]
        y = with_f32_param_grad(lambda x, k: jnp.einsum("bhwi,io->bhwo", x, k[0, 0]), x, kernel, self.dtype)
        if self.use_bias:
            y = with_f32_param_grad(jnp.add, y, self.param("bias", nn.initializers.zeros, (self.features,),
                                                           jnp.float32), self.dtype)
        return y


def conv_stride1(x: jax.Array, kernel: jax.Array, dilation: int) -> jax.Array:
    """A stride-1 conv on the live taps of `kernel` (cpu_kernels.live_kernel; none off-centre: a matmul), with
    tapwise gradients on CPU (cpu_kernels.conv_tapwise_vjp) and XLA's conv gradients elsewhere."""
    kernel = live_kernel(kernel, x.shape[1:3], dilation)
    if kernel.shape[:2] == (1, 1):
        return jnp.einsum("bhwi,io->bhwo", x, kernel[0, 0])
    return per_platform(lambda x, k: conv_tapwise_vjp(x, k, dilation), lambda x, k: xla_conv(x, k, dilation),
                        x, kernel)


class KernelConv(nn.Module):
    """The fields of a k x k convolution module (SpatialConv, models.deformable.DeformableConv)."""
    features: int
    kernel_size: int = 3
    strides: int = 1
    dilation: int = 1
    use_bias: bool = False
    dtype: Any = jnp.float32
    kernel_init: Any = conv_init


class SpatialConv(KernelConv):
    """A k x k conv (odd k) with torchvision-style symmetric padding dilation * (k - 1) // 2 (module docstring):
    nn.Conv's parameters ({"kernel" [k,k,Cin,Cout] float32, "bias" [Cout]}, same names, shapes and
    initialisation) and outputs.

    At stride 1 the taps that only ever read padding are skipped (exact: their products are zeros) and the
    gradients are the platform's (conv_stride1); strided convolutions are XLA's conv on every platform.
    x [B,H,W,Cin] -> [B,ceil(H/s),ceil(W/s),Cout] in `dtype`.
    """

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k, d = self.kernel_size, self.dilation
        if k % 2 == 0:
            raise ValueError(f"SpatialConv {self.name}: kernel_size must be odd (symmetric padding), got {k}")
        kernel = self.param("kernel", self.kernel_init, (k, k, x.shape[-1], self.features), jnp.float32)
        y = with_f32_param_grad(lambda x, k: conv_stride1(x, k, d) if self.strides == 1
                                 else xla_conv(x, k, d, self.strides), x, kernel, self.dtype)
        if self.use_bias:
            y = with_f32_param_grad(jnp.add, y, self.param("bias", nn.initializers.zeros, (self.features,),
                                                           jnp.float32), self.dtype)
        return y


def depthwise_conv(x: jax.Array, kernel: jax.Array, strides: int = 1, dilation: int = 1) -> jax.Array:
    """x [B,H,W,C], kernel [k,k,1,C] (odd k) -> [B,ceil(H/s),ceil(W/s),C]: one k x k filter per channel, padding
    dilation * (k - 1) // 2. Shifted windows on CPU (cpu_kernels.depthwise_shifted), XLA's grouped conv elsewhere."""
    return per_platform(lambda x, k: depthwise_shifted(x, k, strides, dilation),
                        lambda x, k: xla_conv(x, k, dilation, strides, x.shape[-1]), x, kernel)


class DepthwiseConv(nn.Module):
    """nn.Conv(C, (k, k), feature_group_count=C, use_bias=False) with symmetric padding dilation * (k - 1) // 2:
    the same parameter ({"kernel" [k,k,1,C] float32}) and outputs, computed by depthwise_conv.
    x [B,H,W,C] -> [B,ceil(H/strides),ceil(W/strides),C] in `dtype`."""
    kernel_size: int = 3
    strides: int = 1
    dilation: int = 1
    dtype: Any = jnp.float32
    kernel_init: Any = conv_init

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k = self.kernel_size
        if k % 2 == 0:
            raise ValueError(f"DepthwiseConv {self.name}: kernel_size must be odd (symmetric padding), got {k}")
        kernel = self.param("kernel", self.kernel_init, (k, k, 1, x.shape[-1]), jnp.float32)
        return with_f32_param_grad(lambda x, k: depthwise_conv(x, k, self.strides, self.dilation), x, kernel,
                                    self.dtype)


def conv(features: int, kernel_size: int, *, strides: int = 1, dilation: int = 1, use_bias: bool = False,
         dtype: Any = jnp.float32, kernel_init=conv_init, name: str | None = None) -> nn.Module:
    """A k x k conv with torchvision-style symmetric padding dilation * (k - 1) // 2 (see module docstring):
    1x1 convs are PointwiseConv (a matmul), larger ones SpatialConv (dead taps skipped); both have nn.Conv's
    parameters and outputs."""
    if kernel_size == 1:
        return PointwiseConv(features, strides, use_bias, dtype, kernel_init, name=name)
    return SpatialConv(features, kernel_size, strides, dilation, use_bias, dtype, kernel_init, name=name)


def max_pool_3x3_s2(x: jax.Array) -> jax.Array:
    """[B,H,W,C] -> [B,ceil(H/2),ceil(W/2),C]: torchvision's MaxPool2d(3, stride=2, padding=1) (pads with -inf)."""
    return nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))


class BatchNormed(nn.Module):
    """Base of every module that holds batch norm: the model-wide BN settings and compute dtype.

    The fields are keyword-only so that subclasses can declare their own positional fields first.
    """
    bn_mode: str = dataclasses.field(default="frozen", kw_only=True)
    bn_momentum: float = dataclasses.field(default=DEFAULT_BN_MOMENTUM, kw_only=True)
    bn_epsilon: float = dataclasses.field(default=DEFAULT_BN_EPSILON, kw_only=True)
    bn_group_size: int | None = dataclasses.field(default=None, kw_only=True)
    dtype: Any = dataclasses.field(default=jnp.float32, kw_only=True)

    def norm_kwargs(self) -> dict:
        """These settings, to pass on to a child BatchNormed module."""
        return {"bn_mode": self.bn_mode, "bn_momentum": self.bn_momentum, "bn_epsilon": self.bn_epsilon,
                "bn_group_size": self.bn_group_size, "dtype": self.dtype}

    def batch_norm(self, train: bool, name: str) -> nn.Module:
        """A batch-norm submodule `name` with these settings (call from a compact method)."""
        return norm(self.bn_mode, train, momentum=self.bn_momentum, epsilon=self.bn_epsilon, dtype=self.dtype,
                    group_size=self.bn_group_size, name=name)


class ConvBNReLU(BatchNormed):
    """conv (no bias) -> BatchNorm -> ReLU (optional). Params: {'conv': {'kernel'}, 'bn': {'scale', 'bias'}}.

    x [B,H,W,Cin] -> [B,ceil(H/strides),ceil(W/strides),features] in `dtype`.
    """
    features: int
    kernel_size: int = 3
    strides: int = 1
    dilation: int = 1
    relu: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = conv(self.features, self.kernel_size, strides=self.strides, dilation=self.dilation,
                 dtype=self.dtype, name="conv")(x)
        x = self.batch_norm(train, "bn")(x)
        return nn.relu(x) if self.relu else x


def resize_bilinear(x: jax.Array, size: Sequence[int]) -> jax.Array:
    """[B,h,w,C] -> [B,H,W,C] bilinear, half-pixel centres (torch `align_corners=False`), no antialiasing."""
    height, width = size
    return jax.image.resize(x, (x.shape[0], height, width, x.shape[-1]), method="bilinear", antialias=False)


def _is_norm_layer(node: Mapping) -> bool:
    return "scale" in node and set(node) <= {"scale", "bias"}


def frozen_bn_mask(params):
    """Pytree of bools shaped like `params`: False for batch-norm scale/bias, True for every other leaf.

    Careful: `optax.masked(tx, mask)` alone does NOT freeze the False leaves, it passes their raw gradients
    through untransformed. To freeze them, zero their updates after the optimiser (after weight decay too):
        frozen = jax.tree.map(lambda trainable: not trainable, frozen_bn_mask(params))
        tx = optax.chain(tx, optax.masked(optax.set_to_zero(), frozen))
    or label the leaves for `optax.multi_transform({"trained": tx, "frozen": optax.set_to_zero()}, labels)`.
    A norm layer is recognised by its parameter dict holding exactly {'scale', 'bias'} (or only 'scale'),
    which no conv or dense layer has. Accepts the params tree or a whole variables dict; keeps FrozenDict-ness
    so the mask's tree structure matches the input's.
    """
    def walk(node):
        if isinstance(node, Mapping):
            if _is_norm_layer(node):
                return {key: False for key in node}
            return {key: walk(value) for key, value in node.items()}
        return True

    mask = walk(params)
    return flax.core.freeze(mask) if isinstance(params, flax.core.FrozenDict) else mask
