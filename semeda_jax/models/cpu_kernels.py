"""Convolution kernels for XLA:CPU, where XLA's own convolutions are slow, and the one switch that picks them.

models/layers.py computes every convolution through `per_platform(cpu, default, ...)`: the CPU function here when
the program is compiled for CPU, XLA's convolution (`xla_conv`) everywhere else (cuDNN on GPU, TPU's). The choice
is made at lowering time (`lax.platform_dependent`), so one traced program serves every backend and a program
exported for CUDA from a CPU machine holds XLA's convolutions. Every kernel here equals XLA's to float rounding.

  conv_tapwise_vjp      stride-1 k x k conv whose gradients are per-tap matmuls
  depthwise_shifted     depthwise conv as shifted, strided windows (elementwise work)
  live_kernel           the taps of a stride-1 conv that read real pixels (the rest multiply padding only);
                        applied on every platform (it is exact), it pays at the small maps of CPU runs

They were tuned on a 2-core x86 development machine; the measured reasons are in each docstring.
"""
from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp


def per_platform(cpu: Callable, default: Callable, *operands: jax.Array) -> jax.Array:
    """cpu(*operands) in a program compiled for CPU, default(*operands) on every other platform."""
    return jax.lax.platform_dependent(*operands, cpu=cpu, default=default)


def xla_conv(x: jax.Array, kernel: jax.Array, dilation: int, strides: int = 1, groups: int = 1) -> jax.Array:
    """XLA's conv, x [B,H,W,Cin], kernel [kh,kw,Cin/groups,Cout] (odd sizes), padding dilation * (k - 1) // 2."""
    pads = [(dilation * (k // 2),) * 2 for k in kernel.shape[:2]]
    return jax.lax.conv_general_dilated(x, kernel, (strides, strides), pads, rhs_dilation=(dilation, dilation),
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=groups)


def live_taps(size: int, kernel_size: int, dilation: int) -> int:
    """Taps each side of the centre of a stride-1 conv (odd k, symmetric padding dilation * (k - 1) // 2) that
    read at least one real pixel of an axis of `size` pixels: tap t reads offset t * dilation, which is padding
    for every output position once t * dilation >= size."""
    return min(kernel_size // 2, (size - 1) // dilation)


def live_kernel(kernel: jax.Array, size: Sequence[int], dilation: int) -> jax.Array:
    """kernel [k,k,Cin,Cout] cut to its live taps (live_taps) on an input of spatial `size` (H, W).

    The dead taps' products are exact zeros, so the result is the same on every platform; what it saves matters
    at CPU-run sizes: DeepLab's ASPP at rates 12 and 18 on the 12x12 maps of 192 px crops at output stride 16
    becomes a 1x1 conv (a matmul), and the rate-6 branch on the demo's 6x6 maps too. At the papers' sizes (33x33
    and larger at OS 16) every tap is live. The cut taps get a zero gradient, as with nn.Conv."""
    k = kernel.shape[0]
    live = [live_taps(n, k, dilation) for n in size]
    return kernel[k // 2 - live[0]:k // 2 + live[0] + 1, k // 2 - live[1]:k // 2 + live[1] + 1]


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv_tapwise_vjp(x: jax.Array, kernel: jax.Array, dilation: int) -> jax.Array:
    """xla_conv at stride 1, whose gradients are computed tap by tap as matmuls: for each of the kh*kw taps, the
    kernel gradient is shifted(x)^T dy and the input gradient dy W_tap^T added into the shifted window.

    Why: XLA:CPU's kernel gradient of a 3x3 conv runs at 2-3x its forward's time, and its input gradient first
    copies a transposed, flipped kernel; the tapwise matmuls avoid both: 1.1-1.3x faster R-101 steps, but 25-60%
    more step memory (DeepLab v3+ R-101 train step: see docs/benchmarks.md, "Our step against the PyTorch
    peer"). The forward is the plain conv; results equal to float rounding.
    """
    return xla_conv(x, kernel, dilation)


def _conv_tapwise_fwd(x, kernel, dilation):
    return xla_conv(x, kernel, dilation), (x, kernel)


def _conv_tapwise_bwd(dilation, residuals, dy):
    x, kernel = residuals
    (kh, kw), (h, w) = kernel.shape[:2], x.shape[1:3]
    ph, pw = dilation * (kh // 2), dilation * (kw // 2)
    padded = jnp.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0)))
    dx_padded = jnp.zeros(padded.shape, dy.dtype)
    dkernel = []
    for i in range(kh):
        for j in range(kw):
            window = (slice(None), slice(i * dilation, i * dilation + h), slice(j * dilation, j * dilation + w))
            dkernel.append(jnp.einsum("bhwi,bhwo->io", padded[window], dy))
            dx_padded = dx_padded.at[window].add(jnp.einsum("bhwo,io->bhwi", dy, kernel[i, j]))
    dkernel = jnp.stack(dkernel).reshape(kernel.shape)
    return dx_padded[:, ph:ph + h, pw:pw + w].astype(x.dtype), dkernel.astype(kernel.dtype)


conv_tapwise_vjp.defvjp(_conv_tapwise_fwd, _conv_tapwise_bwd)


@functools.partial(jax.checkpoint, static_argnums=(2, 3))
def depthwise_shifted(x: jax.Array, kernel: jax.Array, strides: int, dilation: int) -> jax.Array:
    """Depthwise conv, x [B,H,W,C], kernel [k,k,1,C] -> [B,ceil(H/s),ceil(W/s),C], as k*k shifted, strided windows
    of the padded input times their per-channel weights, summed (elementwise work XLA fuses into single loops).

    Why: XLA:CPU's grouped convolution and its gradients made Xception-71's step 6x slower than torch's on the same
    cores. Rematerialised: the backward recomputes the windows from x instead of saving k*k copies of it.
    """
    (kh, kw), (b, h, w, c) = kernel.shape[:2], x.shape
    ph, pw = dilation * (kh // 2), dilation * (kw // 2)
    h_out, w_out = -(-h // strides), -(-w // strides)
    padded = jnp.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0)))
    y = jnp.zeros((b, h_out, w_out, c), x.dtype)
    for i in range(kh):
        for j in range(kw):
            start = (0, i * dilation, j * dilation, 0)
            limit = (b, start[1] + (h_out - 1) * strides + 1, start[2] + (w_out - 1) * strides + 1, c)
            y = y + jax.lax.slice(padded, start, limit, (1, strides, strides, 1)) * kernel[i, j, 0]
    return y
