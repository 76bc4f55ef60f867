r"""Throughput of training, distillation and sampling for one config.

    python -m diffusion_distillation.benchmark --config=configs/digits.py \
        [--config.train.batch_size=128 ...] [--repeats=5] [--warmup=1] \
        [--sample_steps=N] [--data=synthetic|dataset]

On one model and one batch (`config.train.batch_size`), in one process, this
compiles and times the programs the pipeline runs:

* `forward`: one network forward pass (no gradients) on the training batch;
  the unit the other programs are made of.
* `train`: the base training update (`train.make_train_steps(distill=False)`
  compiled by `train.compile_train_steps`, `train.substeps` updates per call).
* `distill`: the distillation update (`distill=True`), the teacher being a copy
  of the parameters; two teacher forwards, without gradients, inside the step.
* `sample_1step` and `sample`: the teacher's sampler (`config.sampler`) with 1
  and N steps (N = `--sample_steps`, default
  `config.model.eval_sampling_num_steps`) on `config.eval.batch_size` images.
  One compiled program serves both (the step count is data, as in `sample`).

It prints one JSON object per line: one per program, then a summary with
`train_img_per_s`, `distill_img_per_s`, `sample_img_per_s` (the N-step
sampler), `sample_1step_img_per_s`, `distill_train_ratio` (time per distill
update / time per train update) and `distill_train_flop_ratio`.

Timing: `--warmup` untimed calls, then `--repeats` timed calls, each until
`block_until_ready`; times are medians. Training states are donated, so each
call takes the state the previous call returned. The train and distill calls
take turns, so that load on a shared machine skews their ratio less; the
N-step sampler shares the 1-step sampler's executable and its warm-up.

FLOPs come from XLA's cost analysis of the compiled programs. XLA counts a
loop body once, so a training program with `substeps > 1` (a `lax.scan`) is
analysed through a separately compiled single-update program, and the sampler's
per-image FLOPs are its loop body's (one forward + one sampler step) times the
step count. FLOPs are those of the per-device program times the device count.
`utilisation` is achieved / peak FLOP/s of all devices, for known device kinds
(null on CPU and unknown kinds). `peak_memory_bytes` is the device allocator's
peak so far in the process (`memory_stats`, null where unsupported, e.g. CPU);
`program_memory_bytes` is XLA's static estimate for the program alone
(arguments + outputs + temporaries - donated aliases).
"""

import json
import os
import statistics
import time
from typing import Any, Callable, Optional

from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from diffusion_distillation import config_validation
from diffusion_distillation import datasets
from diffusion_distillation import model as model_lib
from diffusion_distillation import parallel
from diffusion_distillation import sample as sample_lib
from diffusion_distillation import train
from diffusion_distillation import train_state
from diffusion_distillation.cli import common
from diffusion_distillation.errors import UserError

# Dense peak TFLOP/s per JAX device, for the compute dtype: bfloat16, and what
# float32 convolutions/matmuls run at under JAX's default precision (TPUs: one
# bfloat16 MXU pass, so the bfloat16 peak; Ampere/Hopper GPUs: TF32).
# Matched in order against the lowercased `device_kind`; first match wins.
PEAK_TFLOPS = (
    ('tpu v2', {'bfloat16': 22.5, 'float32': 22.5}),  # a device = a core
    ('tpu v3', {'bfloat16': 61.5, 'float32': 61.5}),  # a device = a core
    ('tpu v4', {'bfloat16': 275., 'float32': 275.}),
    ('tpu v5 lite', {'bfloat16': 197., 'float32': 197.}),  # v5e
    ('tpu v5e', {'bfloat16': 197., 'float32': 197.}),
    ('tpu v5', {'bfloat16': 459., 'float32': 459.}),  # v5p
    ('tpu v6 lite', {'bfloat16': 918., 'float32': 918.}),  # v6e
    ('tpu v6e', {'bfloat16': 918., 'float32': 918.}),
    ('a100', {'bfloat16': 312., 'float32': 156.}),
    ('h100 pcie', {'bfloat16': 756., 'float32': 378.}),
    ('h100', {'bfloat16': 989., 'float32': 494.}),  # SXM
    ('h200', {'bfloat16': 989., 'float32': 494.}),
    ('v100', {'bfloat16': 125., 'float32': 15.7}),  # bf16 -> fp16 tensor cores
)

SUMMARY_KEYS = ('train_img_per_s', 'distill_img_per_s', 'sample_img_per_s',
                'sample_1step_img_per_s', 'distill_train_ratio',
                'distill_train_flop_ratio')
PROGRAM_KEYS = ('name', 'img_per_s', 'step_time_s', 'call_time_s', 'compile_s',
                'flops_per_img', 'achieved_tflops', 'utilisation',
                'peak_memory_bytes', 'program_memory_bytes')


class BenchmarkError(UserError):
  """A benchmark request that cannot be run (bad flag)."""


def peak_tflops(device_kind: str, dtype: str) -> Optional[float]:
  """Peak dense TFLOP/s of one device of this kind, or None if unknown."""
  kind = device_kind.lower()
  for pattern, peaks in PEAK_TFLOPS:
    if pattern in kind:
      return peaks.get(dtype)
  return None


def _flops(compiled) -> Optional[float]:
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):  # older JAX: one dict per module
    analysis = analysis[0] if analysis else None
  flops = (analysis or {}).get('flops')
  return float(flops) if flops is not None and flops > 0 else None


def _program_memory(compiled) -> Optional[int]:
  try:
    m = compiled.memory_analysis()
  except Exception:  # pylint: disable=broad-except
    return None
  if m is None:
    return None
  return int(m.argument_size_in_bytes + m.output_size_in_bytes +
             m.temp_size_in_bytes - m.alias_size_in_bytes)


def _peak_memory() -> Optional[int]:
  peaks = []
  for device in jax.local_devices():
    try:
      stats = device.memory_stats()
    except Exception:  # pylint: disable=broad-except
      stats = None
    if stats and 'peak_bytes_in_use' in stats:
      peaks.append(int(stats['peak_bytes_in_use']))
  return max(peaks) if peaks else None


def _compile(jitted, *args, options=None):
  t0 = time.perf_counter()
  compiled = jitted.lower(*args).compile(options)
  return compiled, time.perf_counter() - t0


def _time_calls(call: Callable[[], Any], *, repeats: int, warmup: int):
  """Runs `call` warmup + repeats times; returns the timed durations (s)."""
  for _ in range(warmup):
    jax.block_until_ready(call())
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(call())
    times.append(time.perf_counter() - t0)
  return times


def _time_calls_interleaved(calls: dict[str, Callable[[], Any]], *,
                            repeats: int, warmup: int):
  """Like `_time_calls` for several programs, taking turns each repeat."""
  for _ in range(warmup):
    for call in calls.values():
      jax.block_until_ready(call())
  times = {name: [] for name in calls}
  for _ in range(repeats):
    for name, call in calls.items():
      t0 = time.perf_counter()
      jax.block_until_ready(call())
      times[name].append(time.perf_counter() - t0)
  return times


def _record(name, *, times, compile_s, images_per_call, steps_per_call,
            flops_per_img, device_kind, dtype, **extra):
  call = statistics.median(times)
  img_per_s = images_per_call / call
  tflops = (flops_per_img * img_per_s / 1e12 if flops_per_img else None)
  peak = peak_tflops(device_kind, dtype)
  return dict(
      name=name,
      img_per_s=img_per_s,
      step_time_s=call / steps_per_call,
      call_time_s=call,
      times_s=times,
      images_per_call=images_per_call,
      steps_per_call=steps_per_call,
      compile_s=compile_s,
      flops_per_img=flops_per_img,
      achieved_tflops=tflops,
      utilisation=(tflops / (peak * jax.device_count())
                   if tflops and peak else None),
      peak_memory_bytes=_peak_memory(),
      **extra)


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


def _distill_stage(config):
  """The first distillation stage (or, without one, a stand-in for it)."""
  if config.get('distillation'):
    n = config.distillation.start_num_steps // 2
    return train.Stage(1, f'distill_{n}', config.distillation.steps_per_iter,
                       n, True), True
  # No distillation section: distil with the base optimizer settings.
  n = max(1, config.model.eval_sampling_num_steps // 2)
  return train.Stage(1, f'distill_{n}', 1, n, False), False


def _update_program(ctx, stage, opt, init_params, batches, teacher, *,
                    distill: bool, key, options):
  """Compiles one training program; returns (compiled, compile_s, state, flops).

  FLOPs are per update, from a single-update program: the timed one when
  `batches` holds one step, else one compiled for the analysis alone.
  """
  model = model_lib.DiffusionModel.from_config(
      ctx.config, ctx.base_model.data_shape, ctx.base_model.num_classes,
      dropout=opt.dropout)
  jitted = train.compile_train_steps(
      train.make_train_steps(model, opt, key, distill=distill), ctx.mesh)
  state = parallel.replicate(
      train_state.create(init_params, opt.tx, stage.num_sample_steps),
      ctx.mesh)
  compiled, compile_s = _compile(jitted, state, batches, teacher,
                                 options=options)
  substeps = jax.tree.leaves(batches)[0].shape[0]
  if substeps == 1:
    flops = _flops(compiled)
  else:  # XLA counts a scan body once: analyse a loop-free single update.
    one = jax.tree.map(lambda b: b[:1], batches)
    flops = _flops(jitted.lower(state, one, teacher).compile(options))
  return compiled, compile_s, state, flops


def benchmark(config, *, repeats: int = 5, warmup: int = 1,
              sample_steps: Optional[int] = None, data: str = 'synthetic',
              config_name: Optional[str] = None,
              emit: Optional[Callable[[dict], None]] = None,
              compiler_options: Optional[dict[str, Any]] = None) -> list[dict]:
  """Measures every program; returns the records (the summary last).

  `emit` is called with each record as soon as it is measured (the CLI prints
  it as a JSON line). `compiler_options` go to every XLA compile (e.g.
  `{'xla_backend_optimization_level': 0}` for quick, slower code in tests).
  """
  if repeats < 1 or warmup < 0:
    raise BenchmarkError(
        f'need repeats >= 1 and warmup >= 0, got {repeats}, {warmup}')
  if data not in ('synthetic', 'dataset'):
    raise BenchmarkError(f"data must be 'synthetic' or 'dataset', got {data!r}")
  config_validation.validate_config(config)
  emit = emit or (lambda record: None)
  dataset = datasets.get_dataset(
      config.dataset.name, data_dir=config.dataset.data_dir or None,
      **config.dataset.args)
  ctx = train.make_context(config, '/nonexistent', dataset=dataset)
  model = ctx.base_model
  device = jax.devices()[0]
  common = dict(device_kind=device.device_kind, dtype=config.model.dtype)
  batch_size = config.train.batch_size
  substeps = config.train.substeps
  records = []

  def add(record):
    records.append(record)
    emit(record)
    return record

  # One compiled init: cheaper than flax's initializers op by op.
  rep = parallel.replicated(ctx.mesh)
  init_key = jax.random.PRNGKey(config.seed)
  params = jax.jit(model.init_params, out_shardings=rep).lower(
      init_key).compile(compiler_options)(init_key)
  teacher = jax.tree.map(jnp.array, params)  # a copy: states are donated
  batches = parallel.global_batch(_train_batches(config, dataset, data),
                                  ctx.mesh, batch_axis=1)
  key = jax.random.fold_in(jax.random.PRNGKey(config.seed), 0)

  # --- forward: one network pass on the training batch, no gradients.
  split = parallel.batch_sharding(ctx.mesh)
  x = jax.tree.map(lambda b: b[0], batches)
  logsnr = jax.device_put(
      jnp.linspace(-10., 10., batch_size, dtype=jnp.float32), split)
  forward = jax.jit(
      lambda p, z, l, y: model.network.apply({'params': p}, z, l, y,
                                             train=False),
      in_shardings=(rep, split, split, split), out_shardings=split)
  z = jax.jit(model_lib.normalize_images, out_shardings=split)(x['image'])
  compiled, compile_s = _compile(forward, params, z, logsnr, x['label'],
                                 options=compiler_options)
  times = _time_calls(lambda: compiled(params, z, logsnr, x['label']),
                      repeats=repeats, warmup=warmup)
  flops = _flops(compiled)
  fwd = add(_record(
      'forward', times=times, compile_s=compile_s, images_per_call=batch_size,
      steps_per_call=1,
      flops_per_img=flops and flops * jax.device_count() / batch_size,
      program_memory_bytes=_program_memory(compiled), **common))

  # --- train and distill: the pipeline's compiled updates, state threaded.
  base_stage = train.plan_stages(config)[0]
  if base_stage.is_distillation:  # the config distils an external teacher
    base_stage = train.Stage(0, 'base', config.train.num_train_steps,
                             config.model.train_num_steps, False)
  distill_stage, distill_opt_from_config = _distill_stage(config)
  programs = {}
  for name, stage, distill in (('train', base_stage, False),
                               ('distill', distill_stage, True)):
    opt = train.optimization_for(config, stage)
    compiled, compile_s, state, flops = _update_program(
        ctx, stage, opt, teacher if distill else params, batches,
        teacher if distill else None, distill=distill, key=key,
        options=compiler_options)
    holder = {'state': state}

    def call(compiled=compiled, holder=holder, distill=distill):
      # The state is donated: every call takes the one the last call returned.
      holder['state'], metrics = compiled(
          holder['state'], batches, teacher if distill else None)
      return holder['state'], metrics

    programs[name] = dict(call=call, compile_s=compile_s, flops=flops,
                          memory=_program_memory(compiled), opt=opt,
                          stage=stage)
  # Interleaved, so that a slow spell of a shared machine hits both alike and
  # the ratio stays fair.
  times = _time_calls_interleaved(
      {name: p['call'] for name, p in programs.items()}, repeats=repeats,
      warmup=warmup)
  updates = {}
  for name, p in programs.items():
    extra = ({'optimizer_from': 'distillation' if distill_opt_from_config
              else 'train'} if name == 'distill' else {})
    updates[name] = add(_record(
        name, times=times[name], compile_s=p['compile_s'],
        images_per_call=batch_size * substeps, steps_per_call=substeps,
        flops_per_img=p['flops'] and p['flops'] * jax.device_count() /
        batch_size,
        program_memory_bytes=p['memory'], substeps=substeps,
        dropout=p['opt'].dropout,
        sampler_steps_trained=p['stage'].num_sample_steps, **extra, **common))
  del programs

  # --- sampler: one compiled program, 1 and N steps.
  num_steps = sample_steps or config.model.eval_sampling_num_steps
  devices = ctx.mesh.devices.size
  requested = (config.eval.batch_size
               if config.get('eval') and config.eval.get('batch_size')
               else batch_size)
  sample_batch = -(-requested // devices) * devices
  labels = sample_lib.default_labels(sample_batch, model.num_classes)
  labels = jax.make_array_from_callback(
      labels.shape, parallel.batch_sharding(ctx.mesh),
      lambda idx: labels[idx])
  sampler_fn = sample_lib._sampler_fn(model, config.sampler, ctx.mesh)  # pylint: disable=protected-access
  rng = jax.random.PRNGKey(config.seed)
  compiled, compile_s = _compile(sampler_fn, params, rng, labels,
                                 jnp.int32(num_steps),
                                 options=compiler_options)
  # The step count is data, so XLA sees the loop body (one forward and one
  # sampler step) once: FLOPs per image scale with the steps taken.
  body_flops = _flops(compiled)
  memory = _program_memory(compiled)
  sample_records = {}
  for name, steps in (('sample_1step', 1), ('sample', num_steps)):
    n = jnp.int32(steps)
    # One executable: the 1-step calls' warm-up serves the N-step ones too.
    times = _time_calls(lambda n=n: compiled(params, rng, labels, n),
                        repeats=repeats,
                        warmup=warmup if name == 'sample_1step' else 0)
    sample_records[name] = add(_record(
        name, times=times, compile_s=compile_s, images_per_call=sample_batch,
        steps_per_call=steps,
        flops_per_img=(body_flops and body_flops * steps * jax.device_count()
                       / sample_batch),
        program_memory_bytes=memory, sampler=config.sampler,
        sample_steps=steps, sample_batch_size=sample_batch, **common))

  train_rec, distill_rec = updates['train'], updates['distill']
  flop_ratio = (distill_rec['flops_per_img'] / train_rec['flops_per_img']
                if distill_rec['flops_per_img'] and train_rec['flops_per_img']
                else None)
  # Distillation = a training update + 2 teacher forwards (no gradients).
  expected = ((train_rec['flops_per_img'] + 2 * fwd['flops_per_img']) /
              train_rec['flops_per_img']
              if flop_ratio and fwd['flops_per_img'] else None)
  summary = dict(
      summary=True,
      train_img_per_s=train_rec['img_per_s'],
      distill_img_per_s=distill_rec['img_per_s'],
      sample_img_per_s=sample_records['sample']['img_per_s'],
      sample_1step_img_per_s=sample_records['sample_1step']['img_per_s'],
      forward_img_per_s=fwd['img_per_s'],
      distill_train_ratio=distill_rec['step_time_s'] / train_rec['step_time_s'],
      distill_train_flop_ratio=flop_ratio,
      distill_train_flop_ratio_expected=expected,
      train_forward_flop_ratio=(
          train_rec['flops_per_img'] / fwd['flops_per_img']
          if train_rec['flops_per_img'] and fwd['flops_per_img'] else None),
      sample_steps=num_steps,
      sampler=config.sampler,
      device_kind=device.device_kind,
      device_count=jax.device_count(),
      process_count=jax.process_count(),
      backend=jax.default_backend(),
      batch_size=batch_size,
      sample_batch_size=sample_batch,
      substeps=substeps,
      dtype=config.model.dtype,
      data=data,
      config=config_name or config.dataset.name,
      compiler_options=compiler_options or None,
      repeats=repeats,
      warmup=warmup,
      jax_version=jax.__version__,
  )
  add(summary)
  return records


def _json_default(value):
  if isinstance(value, (np.integer,)):
    return int(value)
  if isinstance(value, (np.floating,)):
    return float(value)
  return str(value)


def to_json(record: dict) -> str:
  return json.dumps(record, default=_json_default, sort_keys=False)


# --- Command line ---------------------------------------------------------------

FLAGS = flags.FLAGS


def define_flags():
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  config_flags.DEFINE_config_file(
      'config', None, 'Path to a config file (configs/*.py).',
      lock_config=True)
  flags.DEFINE_integer('repeats', 5, 'Timed calls per program (median).')
  flags.DEFINE_integer('warmup', 1, 'Untimed calls per program first.')
  flags.DEFINE_integer('sample_steps', None,
                       'Teacher sampler steps (default: '
                       'config.model.eval_sampling_num_steps).')
  flags.DEFINE_enum('data', 'synthetic', ['synthetic', 'dataset'],
                    'Random images, or the first batches of the dataset.')
  flags.mark_flags_as_required(['config'])


def main(argv):
  del argv  # checked by common.run
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  path = config_flags.get_config_filename(FLAGS['config'])
  name = os.path.splitext(os.path.basename(path.split(':')[0]))[0]
  def emit(record):
    if jax.process_index() == 0:
      print(to_json(record), flush=True)

  benchmark(common.resolve_config_paths(FLAGS.config), repeats=FLAGS.repeats,
            warmup=FLAGS.warmup, sample_steps=FLAGS.sample_steps,
            data=FLAGS.data, config_name=name, emit=emit)


if __name__ == '__main__':
  define_flags()
  common.run(main)
