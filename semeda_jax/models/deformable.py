"""Deformable convolution v1 (Dai et al. 2017), used by RelationNet in the second convolutions of ResNet-38's
blocks 6 and 7 (RelationNet §II-A-1, SPEC.md 3(b)).

A k x k convolution whose taps sample the input at learned fractional positions:
    y[b,i,j] = sum_{a,c < k} kernel[a,c] . x~[b, i*s - p + a*d + dy[b,i,j,a,c], j*s - p + c*d + dx[b,i,j,a,c]]
with stride s, dilation d, symmetric padding p = d*(k-1)//2 (as layers.conv, so an input of size H gives
ceil(H/s) outputs), and x~ the bilinear interpolation of x in which every corner outside the image counts as
zero (the original DCN and torchvision's deform_conv2d). Zero offsets give exactly the plain convolution.

Sampling is 4 gathers (one per bilinear corner) of all output pixels and taps at once from the input
flattened to [B, H*W, Cin], with the batch as a gather batch dimension, followed by one matmul over (taps,
Cin): no loop over pixels, jit-able, and a batch-sharded input stays sharded (each sample gathers only from
itself). Memory: the sampled tensor [B,Ho,Wo,k*k,Cin] is im2col's. Positions and bilinear weights are computed
in float32 (float64 for float64 offsets) whatever the compute dtype: bfloat16 cannot hold a pixel position
past 256 to better than one pixel.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from semeda_jax.models.layers import KernelConv, conv


def output_size(size: int, kernel_size: int, stride: int, dilation: int) -> int:
    """Output length of a k-tap convolution with symmetric padding dilation*(k-1)//2: ceil(size/stride) for odd k."""
    pad = dilation * (kernel_size - 1) // 2
    return (size + 2 * pad - dilation * (kernel_size - 1) - 1) // stride + 1


def deformable_conv(x: jax.Array, offsets: jax.Array, kernel: jax.Array, *, stride: int = 1,
                    dilation: int = 1) -> jax.Array:
    """Deformable convolution (see the module docstring).

    x [B,H,W,Cin]; offsets [B,Ho,Wo,2*k*k] in input pixels, for tap t = a*k + c (kernel row a, column c)
    channel 2t is the row offset dy and 2t+1 the column offset dx (torchvision's deform_conv2d layout);
    kernel [k,k,Cin,Cout] -> [B,Ho,Wo,Cout] in x's dtype, Ho = ceil(H/stride), Wo = ceil(W/stride) (odd k).
    """
    batch, height, width, channels = x.shape
    k = kernel.shape[0]
    if kernel.shape[:3] != (k, k, channels):
        raise ValueError(f"deformable_conv: kernel shape {kernel.shape} does not match [k,k,{channels},Cout]")
    out_h, out_w = (output_size(n, k, stride, dilation) for n in (height, width))
    if offsets.shape != (batch, out_h, out_w, 2 * k * k):
        raise ValueError(f"deformable_conv: offsets shape {offsets.shape}, expected {(batch, out_h, out_w, 2 * k * k)}")
    pad = dilation * (k - 1) // 2
    pos_dtype = jnp.promote_types(offsets.dtype, jnp.float32)
    taps = jnp.arange(k, dtype=pos_dtype) * dilation
    base_y = (jnp.arange(out_h, dtype=pos_dtype) * stride - pad)[:, None, None, None] + taps[:, None]  # [Ho,1,k,1]
    base_x = (jnp.arange(out_w, dtype=pos_dtype) * stride - pad)[:, None, None] + taps  # [Wo,1,k]
    offsets = offsets.astype(pos_dtype).reshape(batch, out_h, out_w, k, k, 2)
    pos_y = base_y + offsets[..., 0]  # [B,Ho,Wo,k,k]
    pos_x = base_x + offsets[..., 1]
    y0, x0 = jnp.floor(pos_y), jnp.floor(pos_x)
    frac_y, frac_x = pos_y - y0, pos_x - x0
    y0, x0 = y0.astype(jnp.int32), x0.astype(jnp.int32)
    flat = x.reshape(batch, height * width, channels)
    sampled = jnp.zeros((batch, out_h * out_w * k * k, channels), x.dtype)
    for dy, weight_y in ((0, 1 - frac_y), (1, frac_y)):
        for dx, weight_x in ((0, 1 - frac_x), (1, frac_x)):
            row, col = y0 + dy, x0 + dx
            inside = (row >= 0) & (row < height) & (col >= 0) & (col < width)
            index = jnp.clip(row, 0, height - 1) * width + jnp.clip(col, 0, width - 1)
            corner = jnp.take_along_axis(flat, index.reshape(batch, -1, 1), axis=1)  # [B,Ho*Wo*k*k,Cin]
            weight = jnp.where(inside, weight_y * weight_x, 0).astype(x.dtype).reshape(batch, -1, 1)
            sampled = sampled + weight * corner
    sampled = sampled.reshape(batch, out_h, out_w, k * k * channels)
    return jnp.einsum("bhwi,io->bhwo", sampled, kernel.reshape(k * k * channels, -1).astype(x.dtype))


class DeformableConv(KernelConv):
    """A deformable k x k convolution whose offsets come from a k x k conv of the same input, stride and
    dilation (DCN v1: "the same spatial resolution and dilation as those of the current convolutional layer"),
    zero-initialised so that the layer starts as the plain convolution and learns its offsets from there
    (at integer positions the bilinear sample's one-sided derivative is nonzero, so the offsets get gradients).

    Params: {"offset": {"kernel" [k,k,Cin,2*k*k], "bias" [2*k*k]}, "kernel" [k,k,Cin,features],
    ("bias" [features])}, float32. x [B,H,W,Cin] -> [B,ceil(H/strides),ceil(W/strides),features] in `dtype`.
    """

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k = self.kernel_size
        offsets = conv(2 * k * k, k, strides=self.strides, dilation=self.dilation, use_bias=True, dtype=self.dtype,
                       kernel_init=nn.initializers.zeros, name="offset")(x)
        kernel = self.param("kernel", self.kernel_init, (k, k, x.shape[-1], self.features), jnp.float32)
        y = deformable_conv(x.astype(self.dtype), offsets, kernel, stride=self.strides, dilation=self.dilation)
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32).astype(self.dtype)
        return y
