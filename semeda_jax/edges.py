"""Ground-truth semantic edges E* (SEMEDA Sec. 3.3).

A pixel is an edge iff one of its 8 neighbours inside the image carries a different label. Two decisions the
paper leaves open (ARCHITECTURE.md, "Decisions"):
- the image border is not an edge by itself: neighbours outside the image do not count (edge-replicate
  padding makes them equal to the pixel);
- void (255) counts as a label of its own, so VOC's 255 bands outline the objects they surround, and an SBD
  mask without bands gives edges on both sides of every class boundary. Void pixels get edge values too, but
  every loss excludes them.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

NEIGHBOUR_OFFSETS_8 = tuple((dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0))


def semantic_edges(labels: jax.Array) -> jax.Array:
    """labels [..., H, W] int -> bool [..., H, W], True where an in-image 8-neighbour has another label."""
    height, width = labels.shape[-2:]
    pad = [(0, 0)] * (labels.ndim - 2) + [(1, 1), (1, 1)]
    padded = jnp.pad(labels, pad, mode="edge")
    edges = jnp.zeros(labels.shape, dtype=bool)
    for dy, dx in NEIGHBOUR_OFFSETS_8:
        neighbour = padded[..., 1 + dy:1 + dy + height, 1 + dx:1 + dx + width]
        edges = edges | (neighbour != labels)
    return edges

