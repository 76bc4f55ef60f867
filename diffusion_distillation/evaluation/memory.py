"""Device memory of the train and distill updates, from compiled programs.

`benchmark --memory` compiles (never runs) a config's base-training and first
distillation update at two batch sizes per device, on abstract values: no
data, no teacher file and no parameters are needed, so it works offline for
every config. XLA's buffer assignment (`memory_analysis`: arguments, outputs
and temporaries, less donated buffers) gives the bytes per device of each;
the two points give a fixed part (training state, teacher, gradients,
optimizer moments) and a part per image (activations and what the gradient
keeps of them), and from them the largest batch per device that fits a
device of each memory size in `DEVICE_GB`.

The estimate is XLA's for the backend it compiles on. On CPU it tracks what
GPUs and TPUs need (the same program, other fusion decisions; compiled with
ANALYSIS_OPTIONS, so that rematerialization counts as it does there); data
parallelism adds the gradient's all-reduce buffers. JAX on a GPU preallocates
75% of the memory by default (`XLA_PYTHON_CLIENT_MEM_FRACTION`); the sizes
here are whole devices.
"""

from typing import Any, Optional

import jax
import jax.numpy as jnp

from diffusion_distillation import data as data_lib
from diffusion_distillation.errors import UserError
from diffusion_distillation.evaluation import profiling
from diffusion_distillation.models import diffusion_model as model_lib
from diffusion_distillation.parallel import sharding
from diffusion_distillation.pipeline import optimization
from diffusion_distillation.pipeline import update

DEVICE_GB = (16, 24, 32, 40, 80, 141)  # common accelerators' memory, 1e9 B


def _placed(shapes, placement):
  """Abstract arrays of `shapes` with sharding `placement`."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=placement),
      shapes)


def lower_update(config, stage, opt, per_device_batch: int):
  """A stage's update (one step per call), lowered on abstract values."""
  data_shape, num_classes = data_lib.shape_of(config)
  model = model_lib.DiffusionModel.from_config(config, data_shape, num_classes,
                                               dropout=opt.dropout)
  mesh = sharding.make_mesh()
  rep = sharding.replicated(mesh)
  params = jax.eval_shape(model.init_params, jax.random.PRNGKey(0))
  state = _placed(jax.eval_shape(
      lambda p: opt.init_state(p, stage.num_sample_steps), params), rep)
  batch = per_device_batch * jax.device_count()
  batches = _placed({
      'image': jax.ShapeDtypeStruct((1, batch, *data_shape), jnp.float32),
      'label': jax.ShapeDtypeStruct((1, batch), jnp.int32)},
                    sharding.batch_sharding(mesh, 1))
  teacher = _placed(params, rep) if stage.trains_student else None
  key = _placed(jax.eval_shape(lambda: jax.random.PRNGKey(0)), rep)
  jitted = update.compile_train_steps(
      update.make_train_steps(stage.objective_for(model), opt),
      mesh)
  return jitted.lower(state, batches, teacher, key)


def program_bytes(config, stage, opt, per_device_batch: int, *,
                  options: Optional[dict[str, Any]] = None) -> int:
  """Bytes per device of a stage's compiled update (one step per call)."""
  compiled = lower_update(config, stage, opt, per_device_batch).compile(
      options)
  memory = profiling.program_memory(compiled)
  if memory is None:
    raise UserError(f'the {jax.default_backend()} backend reports no memory '
                    'analysis of compiled programs')
  return memory


def fit(points: dict[int, int], parts: int) -> dict[str, Any]:
  """`fixed_bytes`, `bytes_per_image` and `max_batch_per_device` (a multiple
  of `parts`, the microbatches) per device size, from {batch: bytes}."""
  (b1, m1), (b2, m2) = sorted(points.items())
  per_image = max((m2 - m1) / (b2 - b1), 1.)
  fixed = m1 - per_image * b1
  fits = {f'{gb}GB': max(0, int((gb * 1e9 - fixed) / per_image) // parts *
                         parts) for gb in DEVICE_GB}
  return {'fixed_bytes': int(fixed), 'bytes_per_image': int(per_image),
          'max_batch_per_device': fits}


# XLA options for the analysis. Buffer assignment happens before code
# generation, so LLVM's optimizations (most of an XLA:CPU compile) change no
# byte of it. XLA:CPU removes the optimization barriers with which
# jax.checkpoint (`model.remat`) keeps its recomputation from being merged
# back into the forward pass (GPU and TPU keep them); without that pass the
# CPU estimate shows what remat saves on an accelerator.
ANALYSIS_OPTIONS = {'xla_backend_optimization_level': 0,
                    'xla_disable_hlo_passes': 'cse_barrier_expander'}


def measure(config, base_stage, distill_stage, distill_opt_from_config: bool,
            *, options: Optional[dict[str, Any]] = None) -> list[dict]:
  """One record per program ('train', 'distill'), compiled at 32 and 64
  microbatches' worth of images per device (`options`: XLA's, default
  ANALYSIS_OPTIONS). At a few images the activations are smaller than what
  the optimizer step needs, and the peak would not grow with the batch."""
  options = ANALYSIS_OPTIONS if options is None else options
  parts = config.train.num_microbatches
  base_opt = optimization.optimization_for(config, base_stage)
  distill_opt = (optimization.optimization_for(config, distill_stage)
                 if distill_opt_from_config else base_opt)
  records = []
  for name, stage, opt in (('train', base_stage, base_opt),
                           ('distill', distill_stage, distill_opt)):
    points = {b: program_bytes(config, stage, opt, b, options=options)
              for b in (32 * parts, 64 * parts)}
    batch = config.train.batch_size // jax.device_count()
    record = dict(program=name, objective=stage.objective,
                  **fit(points, parts))
    record.update(
        batch_per_device=batch,
        bytes_at_batch=int(record['fixed_bytes'] +
                           record['bytes_per_image'] * batch),
        remat=config.model.remat, num_microbatches=parts,
        dtype=config.model.dtype, backend=jax.default_backend(),
        compiled_batches_per_device=sorted(points),
        compiled_bytes=[points[b] for b in sorted(points)])
    records.append(record)
  return records
