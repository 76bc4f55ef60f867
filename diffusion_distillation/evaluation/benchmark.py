"""Throughput of training, distillation and sampling for one config.

On one model and one batch (`config.train.batch_size`), in one process, this
compiles and times the programs the pipeline runs:

* `forward`: one network forward pass (no gradients) on the training batch;
  the unit the other programs are made of.
* `train`: the base training update (`train.substeps` updates per call).
* `distill`: the distillation update, the teacher being a copy of the
  parameters; two teacher forwards, without gradients, inside the step. A
  config without a distillation section distils with its base optimizer
  settings (`optimizer_from: train`).
* `sample_1step` and `sample`: the teacher's sampler (`config.sampler`) with 1
  and N steps (default `config.model.eval_sampling_num_steps`) on
  `config.eval.batch_size` images. One compiled program serves both (the step
  count is data, as in `generation.generate`).

Records: one per program, then a summary with `train_img_per_s`,
`distill_img_per_s`, `sample_img_per_s` (the N-step sampler),
`sample_1step_img_per_s`, `sample_nfe_forward_ratio` (the sampler's time
per network evaluation over a bare forward's, per image), `distill_train_ratio`
(time per distill update / time per train update) and
`distill_train_flop_ratio`; `to_json` makes each a JSON line.

Each program gets `warmup` untimed calls, then `repeats` timed calls (times
are medians, see `profiling`); the train and distill calls take turns, and the
N-step sampler shares the 1-step sampler's executable and its warm-up.
"""

import json
import time
from typing import Any, Callable, Optional

import jax
import numpy as np

from diffusion_distillation import config as config_lib
from diffusion_distillation import data as data_lib
from diffusion_distillation.diffusion import sampling
from diffusion_distillation.errors import UserError
from diffusion_distillation.evaluation import memory as memory_lib
from diffusion_distillation.evaluation import programs
from diffusion_distillation.pipeline import stages
from diffusion_distillation.pipeline import tracing

SUMMARY_KEYS = ('train_img_per_s', 'distill_img_per_s', 'sample_img_per_s',
                'sample_1step_img_per_s', 'sample_nfe_forward_ratio',
                'distill_train_ratio', 'distill_train_flop_ratio')
PROGRAM_KEYS = ('name', 'img_per_s', 'step_time_s', 'call_time_s', 'compile_s',
                'flops_per_img', 'achieved_tflops', 'utilisation',
                'peak_memory_bytes', 'program_memory_bytes')
DATA_SOURCES = ('synthetic', 'dataset')


class BenchmarkError(UserError):
  """A benchmark request that cannot be run (bad flag)."""


def benchmark(config, *, repeats: int = 5, warmup: int = 1,
              sample_steps: Optional[int] = None, data: str = 'synthetic',
              config_name: Optional[str] = None,
              emit: Optional[Callable[[dict], None]] = None,
              compiler_options: Optional[dict[str, Any]] = None,
              trace: Optional[tracing.StepTrace] = None) -> list[dict]:
  """Measures every program; returns the records (the summary last).

  `emit` is called with each record as soon as it is measured (the CLI prints
  it as a JSON line). `compiler_options` go to every XLA compile (e.g.
  `{'xla_backend_optimization_level': 0}` for quick, slower code in tests).
  `trace`: trace its steps of the train and distill updates, after timing.
  """
  if repeats < 1 or warmup < 0:
    raise BenchmarkError(
        f'need repeats >= 1 and warmup >= 0, got {repeats}, {warmup}')
  if data not in DATA_SOURCES:
    raise BenchmarkError(f"data must be 'synthetic' or 'dataset', got {data!r}")
  config_lib.validate_config(config)
  records = []

  def add(record):
    records.append(record)
    if emit is not None:
      emit(record)
    return record

  bench = programs.prepare(config, data, repeats, warmup, compiler_options,
                           add)
  forward = programs.time_forward(bench)
  updates = programs.time_updates(bench, *benchmark_stages(config),
                                  trace=trace)
  num_steps = sample_steps or config.model.eval_sampling_num_steps
  samplers = programs.time_sampler(bench, num_steps)
  add(_summary(bench, forward, updates, samplers, num_steps, data=data,
               config_name=config_name))
  return records


def memory(config, *, config_name: Optional[str] = None,
           emit: Optional[Callable[[dict], None]] = None,
           compiler_options: Optional[dict[str, Any]] = None) -> list[dict]:
  """`benchmark --memory`: the train and distill updates' device memory,
  compiled and never run (`evaluation/memory.py`); returns the records."""
  config_lib.validate_config(config)
  records = memory_lib.measure(config, *benchmark_stages(config),
                               options=compiler_options)
  for record in records:
    record['config'] = config_name or config.dataset.name
    if emit is not None:
      emit(record)
  return records


def input_pipeline(config, *, batches: int = 50,
                   emit: Optional[Callable[[dict], None]] = None) -> dict:
  """`benchmark --input_pipeline`: images/s of the config's training batches
  alone (read, decode, crop, resize, flip; this process's share), after one
  untimed batch that reads an in-memory split and traces TF functions."""
  config_lib.validate_config(config)
  dataset = data_lib.from_config(config)
  it = dataset.train_batches(global_batch_size=config.train.batch_size,
                             seed=config.seed,
                             process_index=jax.process_index(),
                             process_count=jax.process_count())
  t0 = time.perf_counter()
  next(it)
  first = time.perf_counter() - t0
  t0 = time.perf_counter()
  images = sum(len(next(it)['label']) for _ in range(batches))
  seconds = time.perf_counter() - t0
  record = dict(program='input_pipeline', config=config.dataset.name,
                batch_size=config.train.batch_size, batches=batches,
                first_batch_s=round(first, 3),
                img_per_s=round(images / seconds, 1))
  if emit is not None:
    emit(record)
  return record


def to_json(record: dict) -> str:
  """One record as a JSON line (numpy scalars as numbers)."""
  return json.dumps(record, default=_json_default, sort_keys=False)


def _json_default(value):
  if isinstance(value, (np.integer,)):
    return int(value)
  if isinstance(value, (np.floating,)):
    return float(value)
  return str(value)


# --- Stages ------------------------------------------------------------------


def benchmark_stages(config):
  """`(train stage, distill stage, distill optimizer from config.distillation)`.

  Both come from `plan_stages`: base training, and the first distillation
  stage. A config that distils an external teacher plans no base training, so
  its base stage is the one it would plan without that teacher.
  """
  if stages.external_teacher(config):
    without_teacher = config.copy_and_resolve_references()
    without_teacher.distillation.teacher_checkpoint_path = ''
    base = stages.plan_stages(without_teacher)[0]
  else:
    base = stages.plan_stages(config)[0]
  if 'distillation' not in config:
    return base, _stand_in_distill_stage(config), False
  first = next(s for s in stages.plan_stages(config) if s.trains_student)
  return base, first, True


def _stand_in_distill_stage(config) -> stages.Stage:
  """What a config without a distillation section times as `distill`.

  `plan_stages` has no distillation stage for it, so this one is built by
  hand: a student of half the eval step count; it trains with the base
  optimizer settings (`programs.time_updates`, as the third value of
  `benchmark_stages` says).
  """
  n = max(1, config.model.eval_sampling_num_steps // 2)
  return stages.Stage(1, stages.distill_stage_name(n), 1, n, 'progressive')


# --- Summary -----------------------------------------------------------------


def _flop_ratios(forward: dict, train: dict, distill: dict):
  """(distill / train, its expected value, train / forward) FLOPs per image."""
  flop_ratio = (distill['flops_per_img'] / train['flops_per_img']
                if distill['flops_per_img'] and train['flops_per_img']
                else None)
  # Distillation = a training update + 2 teacher forwards (no gradients).
  expected = ((train['flops_per_img'] + 2 * forward['flops_per_img']) /
              train['flops_per_img']
              if flop_ratio and forward['flops_per_img'] else None)
  train_forward = (train['flops_per_img'] / forward['flops_per_img']
                   if train['flops_per_img'] and forward['flops_per_img']
                   else None)
  return flop_ratio, expected, train_forward


def _nfe_forward_ratio(forward: dict, sample: dict, sampler: str,
                       num_steps: int) -> float:
  """The sampler's time per image and network evaluation over a bare
  forward's per image: what the sampler adds to its network (its update,
  clipping, schedule; 1.0: nothing). Per image, as the two run at their own
  batch sizes (`config.train.batch_size`, `config.eval.batch_size`): make
  them equal for a like-for-like ratio."""
  nfe = sampling.network_evaluations(sampler, num_steps)
  return forward['img_per_s'] / (sample['img_per_s'] * nfe)


def _summary(bench: programs.Bench, forward, updates, samplers, num_steps: int, *,
             data: str, config_name: Optional[str]) -> dict:
  """The summary record (the last line)."""
  config = bench.config
  train, distill = updates['train'], updates['distill']
  flop_ratio, expected, train_forward = _flop_ratios(forward, train, distill)
  return dict(
      summary=True,
      train_img_per_s=train['img_per_s'],
      distill_img_per_s=distill['img_per_s'],
      sample_img_per_s=samplers['sample']['img_per_s'],
      sample_1step_img_per_s=samplers['sample_1step']['img_per_s'],
      forward_img_per_s=forward['img_per_s'],
      sample_nfe_forward_ratio=_nfe_forward_ratio(
          forward, samplers['sample'], config.sampler, num_steps),
      distill_train_ratio=distill['step_time_s'] / train['step_time_s'],
      distill_train_flop_ratio=flop_ratio,
      distill_train_flop_ratio_expected=expected,
      train_forward_flop_ratio=train_forward,
      sample_steps=num_steps,
      sampler=config.sampler,
      device_kind=jax.devices()[0].device_kind,
      device_count=jax.device_count(),
      process_count=jax.process_count(),
      backend=jax.default_backend(),
      batch_size=config.train.batch_size,
      sample_batch_size=samplers['sample']['sample_batch_size'],
      substeps=config.train.substeps,
      dtype=config.model.dtype,
      data=data,
      config=config_name or config.dataset.name,
      compiler_options=bench.options or None,
      repeats=bench.repeats,
      warmup=bench.warmup,
      jax_version=jax.__version__,
  )
