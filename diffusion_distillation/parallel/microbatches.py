"""Gradient accumulation: one update computed over microbatches.

`train.num_microbatches = M` splits the batch into M microbatches, computes
their gradients one after another in a `lax.scan` and takes one optimizer
step on their sum, so activation memory is that of B / M examples. The
update is the full batch's, up to float rounding: every random draw of the
loss (times, noise, dropout masks, label dropout, w) is made for the whole
batch and each microbatch takes its rows of it (`draw`), and each example's
loss is weighted by 1 / B as in the full batch's mean.

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


def draw(sample_fn: Callable, rng, shape, microbatch: Optional[Microbatch],
         **kwargs):
  """`sample_fn(rng, shape=shape, **kwargs)` (a `jax.random` sampler; `shape`'s
  first axis the batch), the same values whether or not the batch is split:
  for a microbatch, the whole batch's draw and then its rows. For dropout
  masks that draw is activation-sized: XLA:CPU keeps the whole batch's bits,
  so microbatches save less memory with dropout than without (README)."""
  if microbatch is None:
    return sample_fn(rng, shape=shape, **kwargs)
  whole = sample_fn(rng, shape=(shape[0] * microbatch.count, *shape[1:]),
                    **kwargs)
  return microbatch.take(whole)


def split(batch, count: int):
  """`batch`'s arrays with a new leading axis of `count` microbatches."""
  return jax.tree.map(
      lambda x: jnp.swapaxes(
          x.reshape(x.shape[0] // count, count, *x.shape[1:]), 0, 1), batch)


def value_and_grad(per_example_loss: Callable, count: int) -> Callable:
  """`(params, batch, *args) -> (loss, grads)`: the batch mean of
  `per_example_loss(params, batch, *args, microbatch=...)` and its gradient
  in `count` microbatches (`count == 1`: the batch at once, as before)."""
  if count == 1:
    return jax.value_and_grad(
        lambda params, batch, *args: per_example_loss(
            params, batch, *args, microbatch=None).mean())

  def accumulated(params, batch, *args):
    total = jax.tree.leaves(batch)[0].shape[0]

    def loss_sum(p, part, index):
      losses = per_example_loss(p, part, *args,
                                microbatch=Microbatch(index, count))
      return losses.sum() / total

    def body(carry, inputs):
      index, part = inputs
      loss, grads = jax.value_and_grad(loss_sum)(params, part, index)
      return jax.tree.map(jnp.add, carry, (loss, grads)), None

    zeros = (jnp.zeros((), jnp.float32), jax.tree.map(jnp.zeros_like, params))
    (loss, grads), _ = jax.lax.scan(
        body, zeros, (jnp.arange(count), split(batch, count)))
    return loss, grads

  return accumulated
