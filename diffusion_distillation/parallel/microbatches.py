"""Gradient accumulation: one update computed over microbatches.

`train.num_microbatches = M` splits the batch into M microbatches, computes
their gradients one after another in a `lax.scan` and takes one optimizer
step on their sum, so activation memory is that of B / M examples. The
update is the full batch's, up to float rounding: every random quantity of
the loss (times, noise, label dropout, w) is drawn for the whole batch before
the loss (the objectives' `draw`), and accumulation only slices those inputs
by rows, as it slices the batch. Dropout masks, drawn inside the network, come
from a `BatchKey`: the whole batch's mask, of which a microbatch takes its
rows. Each example's loss is weighted by 1 / B as in the full batch's mean.

Microbatch j holds rows j, j + M, j + 2M, ... of the batch. The devices of
the `data` axis hold contiguous blocks of B / D rows, so when M divides
B / D each microbatch takes the same number of rows from every device, and
no data moves between devices.
"""

from typing import Callable, Optional

import flax
import jax
import jax.numpy as jnp


class Microbatch(flax.struct.PyTreeNode):
  """Microbatch `index` (traced) of `count` (static) of one batch."""
  index: jnp.ndarray
  count: int = flax.struct.field(pytree_node=False)

  def take(self, whole):
    """This microbatch's rows of `whole`, an array over the whole batch."""
    grouped = whole.reshape(whole.shape[0] // self.count, self.count,
                            *whole.shape[1:])
    return jax.lax.dynamic_index_in_dim(grouped, self.index, axis=1,
                                        keepdims=False)


class BatchKey(flax.struct.PyTreeNode):
  """A PRNG key for draws the size of a batch's activations (dropout masks),
  made where they are used, and which rows of that batch are computed.

  `rows` is None for the whole batch; gradient accumulation sets it to each
  microbatch in turn (`value_and_grad`), so that every microbatch takes its
  rows of the whole batch's draw.
  """
  key: jnp.ndarray
  rows: Optional[Microbatch] = None


def draw(sample_fn: Callable, rng, shape, rows: Optional[Microbatch],
         **kwargs):
  """`sample_fn(rng, shape=shape, **kwargs)` (a `jax.random` sampler,
  `shape`'s first axis the batch), the same values whether or not the batch
  is split: for microbatch `rows`, the whole batch's draw and then its rows.
  For dropout masks that draw is activation-sized: XLA:CPU keeps the whole
  batch's bits, so microbatches save less memory with dropout than without
  (docs/scaling.md)."""
  if rows is None:
    return sample_fn(rng, shape=shape, **kwargs)
  whole = sample_fn(rng, shape=(shape[0] * rows.count, *shape[1:]), **kwargs)
  return rows.take(whole)


def split(batch, count: int):
  """`batch`'s arrays with a new leading axis of `count` microbatches."""
  return jax.tree.map(
      lambda x: jnp.swapaxes(
          x.reshape(x.shape[0] // count, count, *x.shape[1:]), 0, 1), batch)


def _is_key(leaf) -> bool:
  return isinstance(leaf, BatchKey)


def value_and_grad(per_example_loss: Callable, count: int) -> Callable:
  """`(params, inputs) -> (loss, grads)`: the batch mean of
  `per_example_loss(params, inputs)` and its gradient in `count` microbatches
  (`count == 1`: the batch at once).

  `inputs` is a pytree of arrays whose first axis is the batch (the batch
  and the random draws of the loss), and of `BatchKey`s: a microbatch is its
  rows of every array, and every `BatchKey` set to those rows.
  """
  if count == 1:
    return jax.value_and_grad(
        lambda params, inputs: per_example_loss(params, inputs).mean())

  def accumulated(params, inputs):
    leaves, treedef = jax.tree.flatten(inputs, is_leaf=_is_key)
    arrays = [leaf for leaf in leaves if not _is_key(leaf)]
    total = arrays[0].shape[0]

    def microbatch(index, parts):
      rows, parts = Microbatch(index, count), iter(parts)
      return treedef.unflatten([
          leaf.replace(rows=rows) if _is_key(leaf) else next(parts)
          for leaf in leaves])

    def loss_sum(p, index, parts):
      return per_example_loss(p, microbatch(index, parts)).sum() / total

    def body(carry, xs):
      loss, grads = jax.value_and_grad(loss_sum)(params, *xs)
      return jax.tree.map(jnp.add, carry, (loss, grads)), None

    zeros = (jnp.zeros((), jnp.float32), jax.tree.map(jnp.zeros_like, params))
    (loss, grads), _ = jax.lax.scan(
        body, zeros, (jnp.arange(count), split(arrays, count)))
    return loss, grads

  return accumulated
