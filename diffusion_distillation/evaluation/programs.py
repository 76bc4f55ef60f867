"""The compiled programs the benchmark times, on one model and one batch.

XLA counts a loop body once, so a training program with `substeps > 1` (a
`lax.scan`) is analysed through a separately compiled single-update program,
and the sampler's per-image FLOPs are its loop body's (one forward + one
sampler step) times the step count.
"""

import dataclasses
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_distillation import data as data_lib
from diffusion_distillation.evaluation import profiling
from diffusion_distillation.models import diffusion_model as model_lib
from diffusion_distillation.models import generation
from diffusion_distillation.parallel import sharding
from diffusion_distillation.pipeline import loop
from diffusion_distillation.pipeline import optimization
from diffusion_distillation.pipeline import tracing
from diffusion_distillation.pipeline import update


@dataclasses.dataclass
class Bench:
  """What every timed program shares."""
  config: Any
  ctx: Any  # stages.Context
  params: Any
  teacher: Any  # a copy of `params`: training states are donated
  batches: Any  # `train.substeps` stacked global batches
  repeats: int
  warmup: int
  options: Optional[dict[str, Any]]
  add: Callable[[dict], dict]  # records and emits a record

  def fields(self) -> dict[str, Any]:
    """The record fields `profiling.program_record` needs besides timing."""
    return dict(device_kind=jax.devices()[0].device_kind,
                dtype=self.config.model.dtype)


def _synthetic_batch(rng: np.random.Generator, batch: int, data_shape,
                     num_classes: int):
  return {'image': rng.uniform(0., 255., (batch, *data_shape)).astype(
              np.float32),
          'label': rng.integers(0, num_classes, (batch,)).astype(np.int32)}


def _train_batches(config, dataset, data: str):
  """`train.substeps` stacked local batches (this process's share)."""
  substeps = config.train.substeps
  if data == 'dataset':
    it = dataset.train_batches(
        global_batch_size=config.train.batch_size, seed=config.seed,
        process_index=jax.process_index(), process_count=jax.process_count())
    batches = [next(it) for _ in range(substeps)]
  else:
    local = config.train.batch_size // jax.process_count()
    rng = np.random.default_rng(config.seed)
    batches = [_synthetic_batch(rng, local, dataset.data_shape,
                                dataset.num_classes) for _ in range(substeps)]
  return jax.tree.map(lambda *xs: np.stack(xs), *batches)


def prepare(config, data: str, repeats: int, warmup: int,
            options: Optional[dict[str, Any]],
            add: Callable[[dict], dict]) -> Bench:
  """The model, its parameters and the training batches.

  `data`: 'synthetic' (random images) or 'dataset' (its first batches).
  """
  dataset = data_lib.from_config(config)
  ctx = loop.make_context(config, '/nonexistent', dataset=dataset)
  # One compiled init: cheaper than flax's initializers op by op.
  init_key = jax.random.PRNGKey(config.seed)
  params = jax.jit(ctx.base_model.init_params,
                   out_shardings=sharding.replicated(ctx.mesh)).lower(
                       init_key).compile(options)(init_key)
  teacher = jax.tree.map(jnp.array, params)
  batches = sharding.global_batch(_train_batches(config, dataset, data),
                                  ctx.mesh, batch_axis=1)
  return Bench(config, ctx, params, teacher, batches, repeats, warmup,
               options, add)


def time_forward(bench: Bench) -> dict:
  """One network pass on the training batch, no gradients."""
  model, mesh = bench.ctx.base_model, bench.ctx.mesh
  batch_size = bench.config.train.batch_size
  rep, split = sharding.replicated(mesh), sharding.batch_sharding(mesh)
  x = jax.tree.map(lambda b: b[0], bench.batches)
  logsnr = jax.device_put(
      jnp.linspace(-10., 10., batch_size, dtype=jnp.float32), split)
  forward = jax.jit(
      lambda p, z, l, y: model.network.apply({'params': p}, z, l, y,
                                             train=False),
      in_shardings=(rep, split, split, split), out_shardings=split)
  z = jax.jit(model_lib.normalize_images, out_shardings=split)(x['image'])
  compiled, compile_s = profiling.compile_timed(
      forward, bench.params, z, logsnr, x['label'], options=bench.options)
  times = profiling.time_calls(
      lambda: compiled(bench.params, z, logsnr, x['label']),
      repeats=bench.repeats, warmup=bench.warmup)
  flops = profiling.flops(compiled)
  return bench.add(profiling.program_record(
      'forward', times=times, compile_s=compile_s, images_per_call=batch_size,
      steps_per_call=1,
      flops_per_img=flops and flops * jax.device_count() / batch_size,
      program_memory_bytes=profiling.program_memory(compiled),
      **bench.fields()))


def _update_program(bench: Bench, stage, opt, *, key) -> dict:
  """Compiles one training program; returns its call and static figures.

  FLOPs are per update, from a single-update program: the timed one when the
  batches hold one step, else one compiled for the analysis alone.
  """
  distill = stage.trains_student
  model = model_lib.DiffusionModel.from_config(
      bench.config, bench.ctx.base_model.data_shape,
      bench.ctx.base_model.num_classes, dropout=opt.dropout)
  jitted = update.compile_train_steps(
      update.make_train_steps(stage.objective_for(model), opt),
      bench.ctx.mesh)
  init_params = bench.teacher if distill else bench.params
  teacher = bench.teacher if distill else None
  holder = {'state': sharding.replicate(
      opt.init_state(init_params, stage.num_sample_steps),
      bench.ctx.mesh)}
  compiled, compile_s = profiling.compile_timed(
      jitted, holder['state'], bench.batches, teacher, key,
      options=bench.options)
  if jax.tree.leaves(bench.batches)[0].shape[0] == 1:
    flops = profiling.flops(compiled)
  else:  # XLA counts a scan body once: analyse a loop-free single update.
    one = jax.tree.map(lambda b: b[:1], bench.batches)
    flops = profiling.flops(jitted.lower(holder['state'], one, teacher,
                                         key).compile(bench.options))

  def call():
    # The state is donated: every call takes the one the last call returned.
    holder['state'], metrics = compiled(holder['state'], bench.batches,
                                        teacher, key)
    return holder['state'], metrics

  return dict(call=call, compile_s=compile_s, flops=flops,
              memory=profiling.program_memory(compiled), opt=opt, stage=stage)


def time_updates(bench: Bench, base_stage, distill_stage,
                 distill_opt_from_config: bool,
                 trace: Optional[tracing.StepTrace] = None) -> dict[str, dict]:
  """The pipeline's compiled train and distill updates, timed in turns.

  Training states are donated, so each call takes the state the previous call
  returned. The two programs take turns, so that load on a shared machine
  skews their ratio less. With `trace`, its steps of each program are
  traced after the timing.
  """
  key = jax.random.fold_in(jax.random.PRNGKey(bench.config.seed), 0)
  distill_opt = optimization.optimization_for(
      bench.config, distill_stage if distill_opt_from_config else base_stage)
  programs = {
      'train': _update_program(
          bench, base_stage,
          optimization.optimization_for(bench.config, base_stage), key=key),
      'distill': _update_program(bench, distill_stage, distill_opt, key=key)}
  times = profiling.time_calls_interleaved(
      {name: p['call'] for name, p in programs.items()},
      repeats=bench.repeats, warmup=bench.warmup)
  if trace is not None:
    _trace_calls(trace, [p['call'] for p in programs.values()])
  batch_size = bench.config.train.batch_size
  substeps = bench.config.train.substeps
  records = {}
  for name, p in programs.items():
    extra = ({'optimizer_from': 'distillation' if distill_opt_from_config
              else 'train'} if name == 'distill' else {})
    records[name] = bench.add(profiling.program_record(
        name, times=times[name], compile_s=p['compile_s'],
        images_per_call=batch_size * substeps, steps_per_call=substeps,
        flops_per_img=p['flops'] and p['flops'] * jax.device_count() /
        batch_size,
        program_memory_bytes=p['memory'], substeps=substeps,
        dropout=p['opt'].dropout,
        sampler_steps_trained=p['stage'].num_sample_steps, **extra,
        **bench.fields()))
  return records


def _trace_calls(trace: tracing.StepTrace, calls):
  """Calls each of `calls` in turn until `trace` has its steps of each."""
  while not trace.done:
    trace.after_call(1, [call() for call in calls])


def _sample_batch_size(config, devices: int) -> int:
  """`config.eval.batch_size`, rounded up to a multiple of the device
  count."""
  return -(-config.eval.batch_size // devices) * devices


def time_sampler(bench: Bench, num_steps: int) -> dict[str, dict]:
  """The teacher's sampler: one compiled program, 1 and `num_steps` steps."""
  config, ctx, params = bench.config, bench.ctx, bench.params
  sample_batch = _sample_batch_size(config, ctx.mesh.devices.size)
  host_labels = generation.default_labels(sample_batch,
                                          ctx.base_model.num_classes)
  put = lambda a: jax.make_array_from_callback(
      a.shape, sharding.batch_sharding(ctx.mesh), lambda idx: a[idx])
  labels = put(host_labels)
  index = put(np.arange(sample_batch, dtype=np.int32))
  sampler_fn = generation.compiled_sampler(ctx.base_model, config.sampler,
                                           ctx.mesh)
  rng = generation.seed_key(config.seed)
  compiled, compile_s = profiling.compile_timed(
      sampler_fn, params, rng, labels, index, jnp.int32(num_steps),
      options=bench.options)
  # The step count is data, so XLA sees the loop body (one forward and one
  # sampler step) once: FLOPs per image scale with the steps taken.
  body_flops = profiling.flops(compiled)
  memory = profiling.program_memory(compiled)
  records = {}
  for name, steps in (('sample_1step', 1), ('sample', num_steps)):
    n = jnp.int32(steps)
    # One executable: the 1-step calls' warm-up serves the N-step ones too.
    times = profiling.time_calls(
        lambda n=n: compiled(params, rng, labels, index, n),
        repeats=bench.repeats,
        warmup=bench.warmup if name == 'sample_1step' else 0)
    records[name] = bench.add(profiling.program_record(
        name, times=times, compile_s=compile_s, images_per_call=sample_batch,
        steps_per_call=steps,
        flops_per_img=(body_flops and body_flops * steps * jax.device_count()
                       / sample_batch),
        program_memory_bytes=memory, sampler=config.sampler,
        sample_steps=steps, sample_batch_size=sample_batch, **bench.fields()))
  return records
