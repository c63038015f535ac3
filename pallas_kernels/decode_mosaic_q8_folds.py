"""Folds in the 8-bit Mosaic decode: a step's key runs as query columns.

Decode's query tile is a KV head's GQA group padded to N = 16, 32 or 64
columns (wgmma's N): at GQA 4 three quarters of Sᵀ's [block_kv, N] tile,
and of the softmax's elementwise work on it, are padding.
DecodeMosaicConfig.fold = F > 1 cuts that: a step's keys are F runs of R =
block_kv / F (>= 64, wgmma's M) and q is F slabs [N, d], slab f holding the
group in columns [f G, (f + 1) G) (G the group, zeros elsewhere: fold_q), so

  Sᵀ [R, N] = Σ_f K[f R : (f + 1) R] Q_fᵀ

holds key f R + i of query j at (i, f G + j). Each column is its own online
softmax (max, sums); Pᵀ goes to the P stage as F row slabs, slab f masked
to fold f's columns (Folds.store), so the one P V wgmma over the step's
keys gives column f G + j fold f's share of query j's output. The shares
leave as split partials (an lse a column) and are merged with the splits'
(unfold, then decode_mosaic.combine_splits). The wgmma count is unchanged;
the softmax's elementwise work a step is 1/F of the unfolded tile's.

NOTE: a key's row meets every fold's q slab (zeros outside its own
columns), so a NaN in K past a row's end would spoil the other folds'
columns through 0 * NaN: the compute warpgroup zeroes e4m3 K rows past the
end before the wgmma under folds (int8 has no NaN; V's rows past the end
are zeroed by the V converter either way).
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

LAYOUT = plgpu.Layout.WGMMA  # Sᵀ's and the compute warpgroup's register tiles
KEYS = LAYOUT.reduce(1)  # a value per key row


class Folds:
  """A step's keys as Sᵀ's [R, N] tile holds them: fold f (keys f R + i) in
  columns [f G, (f + 1) G), the padding columns with the last fold."""

  def __init__(self, cfg, shape):
    self.rows, self.shape = shape[0], shape
    self.starts = [f * cfg.group for f in range(cfg.fold)]  # folds' first columns
    self.col = (plgpu.broadcasted_iota(jnp.int32, shape, 1, layout=LAYOUT)
                if cfg.fold > 1 else None)

  def per_key(self, scales_ref, factor=1.0):
    """[R, N] f32: each element's key's scale (scales_ref [block_kv] f32, the
    ring's) times factor."""
    out = None
    for f, start in enumerate(self.starts):
      v = plgpu.load(scales_ref.at[pl.ds(f * self.rows, self.rows)], layout=KEYS)
      v = lax.broadcast_in_dim(v * factor, self.shape, [0])
      out = v if out is None else jnp.where(self.col >= start, v, out)
    return out

  def offset(self):
    """[R, N] int32 (0 unfolded): each element's key less its row."""
    return sum((jnp.where(self.col >= start, self.rows, 0)
                for start in self.starts[1:]), 0)

  def store(self, p_t, p):
    """p [R, N] f32 into p_t [block_kv, N] bf16: fold f's columns as rows
    [f R, (f + 1) R), zero in the other folds' columns."""
    if self.col is None:
      p_t[...] = p.astype(p_t.dtype)
      return
    for f, start in enumerate(self.starts):
      mine = self.col >= start
      if f + 1 < len(self.starts):
        mine = mine & (self.col < self.starts[f + 1])
      p_t.at[pl.ds(f * self.rows, self.rows)][...] = jnp.where(
          mine, p, 0.0).astype(p_t.dtype)


def fold_q(q_args, group: int, fold: int):
  """q's operands (split_q's or (qp,)) with each term as `fold` slabs, slab f
  the group's rows moved to [f group, (f + 1) group) (rows past the group
  are zero, so a roll); the terms' scales [.., 2, N] per column of its fold."""
  if fold == 1:
    return q_args
  roll = lambda x, f, axis: jnp.roll(x, f * group, axis=axis)
  q, cols = q_args[0], q_args[0].shape[2] // len(q_args)
  terms = q.reshape(q.shape[:2] + (len(q_args), cols, q.shape[-1]))
  slabs = jnp.stack([roll(terms, f, 3) for f in range(fold)], axis=3)
  q = slabs.reshape(q.shape[:2] + (-1, q.shape[-1]))
  if len(q_args) == 1:
    return (q,)
  fold_of = jnp.arange(cols) // group
  scales = sum(jnp.where(fold_of == f, roll(q_args[1], f, 3), 0.0)
               for f in range(fold))
  return q, scales


def unfold(part, lse, group: int, fold: int):
  """The kernel's partials part [.., splits, N, d] and lse [.., splits, N]
  -> [.., splits * fold, N, d] and [.., splits * fold, N], fold f's columns
  moved back to the group's rows."""
  if fold == 1:
    return part, lse
  back = lambda x, axis: jnp.stack(
      [jnp.roll(x, -f * group, axis=axis) for f in range(fold)], axis=3)
  part, lse = back(part, 3), back(lse, 3)
  return (part.reshape(part.shape[:2] + (-1,) + part.shape[4:]),
          lse.reshape(lse.shape[:2] + (-1, lse.shape[-1])))
