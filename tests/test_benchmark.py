"""The benchmark runs end to end on a tiny config and reports what it promises.

No timing thresholds: only that every record parses and holds positive numbers.
"""

import json
import math

import pytest

from diffusion_distillation import config as config_lib
from diffusion_distillation.evaluation import benchmark
from diffusion_distillation.evaluation import memory
from diffusion_distillation.evaluation import profiling
from diffusion_distillation.pipeline import optimization
from diffusion_distillation.pipeline import stages
from diffusion_distillation.pipeline import tracing

from helpers import config_path
from helpers import load_config
from helpers import override_flags
from helpers import run_module
from helpers import tiny_config

pytestmark = pytest.mark.slow  # end-to-end runs

PROGRAMS = ('forward', 'train', 'distill', 'sample_1step', 'sample')
POSITIVE = ('img_per_s', 'step_time_s', 'call_time_s', 'compile_s',
            'flops_per_img', 'achieved_tflops')


def _positive(value):
  return (isinstance(value, (int, float)) and not isinstance(value, bool)
          and math.isfinite(value) and value > 0)


def test_benchmark_json_lines(tmp_path):
  lines = []
  records = benchmark.benchmark(
      tiny_config(train__substeps=1), repeats=1, warmup=1, sample_steps=2,
      config_name='digits_tiny',
      emit=lambda r: lines.append(benchmark.to_json(r)),
      # Compiles about 3x faster (slower code): timings are not checked.
      compiler_options={'xla_backend_optimization_level': 0},
      trace=tracing.StepTrace(tmp_path / 'profile', 2))
  assert list((tmp_path / 'profile').rglob('*.xplane.pb'))
  assert len(lines) == len(records) == len(PROGRAMS) + 1
  parsed = [json.loads(line) for line in lines]

  programs = {r['name']: r for r in parsed[:-1]}
  assert tuple(programs) == PROGRAMS
  for name, record in programs.items():
    assert set(benchmark.PROGRAM_KEYS) <= set(record), name
    for key in POSITIVE:
      assert _positive(record[key]), (name, key, record[key])
    assert record['utilisation'] is None  # CPU: no known peak
  assert programs['sample']['steps_per_call'] == 2
  assert programs['train']['images_per_call'] == 8
  assert programs['sample']['images_per_call'] == 8  # eval.batch_size

  summary = parsed[-1]
  assert summary['summary'] is True
  for key in benchmark.SUMMARY_KEYS:
    assert _positive(summary[key]), (key, summary[key])
  assert summary['train_img_per_s'] == programs['train']['img_per_s']
  assert summary['sample_img_per_s'] == programs['sample']['img_per_s']
  assert summary['sample_steps'] == 2
  assert summary['sample_nfe_forward_ratio'] == pytest.approx(
      programs['forward']['img_per_s'] / (summary['sample_img_per_s'] * 2))
  assert summary['config'] == 'digits_tiny'
  assert summary['batch_size'] == 8
  assert summary['device_count'] >= 1 and summary['backend'] == 'cpu'
  assert isinstance(summary['jax_version'], str)
  # Distillation is a training update plus two forwards without gradients.
  assert 1.3 < summary['distill_train_flop_ratio'] < 2.0


def test_peak_tflops_table():
  assert profiling.peak_tflops('TPU v4', 'bfloat16') == 275.
  assert profiling.peak_tflops('TPU v5 lite', 'bfloat16') == 197.
  assert profiling.peak_tflops('TPU v5', 'bfloat16') == 459.
  assert profiling.peak_tflops('NVIDIA A100-SXM4-80GB', 'float32') == 156.
  assert profiling.peak_tflops('NVIDIA H100 80GB HBM3', 'bfloat16') == 989.
  assert profiling.peak_tflops('cpu', 'float32') is None


def test_benchmark_stages_come_from_the_plan():
  config = tiny_config()
  plan = stages.plan_stages(config)
  assert benchmark.benchmark_stages(config) == (plan[0], plan[1], True)

  # An external teacher: the plan has no base stage; the one it would have.
  external = tiny_config(distillation__teacher_checkpoint_path='/teacher')
  base, distill, from_config = benchmark.benchmark_stages(external)
  assert base == plan[0] and not base.trains_student
  assert distill == stages.plan_stages(external)[0] and from_config
  assert external.distillation.teacher_checkpoint_path == '/teacher'

  # No distillation section: a stand-in trained with the base optimizer.
  base_only = tiny_config()
  del base_only['distillation']
  base, distill, from_config = benchmark.benchmark_stages(base_only)
  assert base == plan[0] and not from_config
  assert distill.num_sample_steps == 4  # eval_sampling_num_steps // 2
  assert distill.objective == 'progressive'  # with the base optimizer


def test_memory_lines_from_the_cli():
  done = run_module('benchmark', '--memory', f'--config={config_path("digits")}',
                    *override_flags())
  assert done.returncode == 0, done.stderr[-3000:]
  records = [json.loads(line) for line in done.stdout.splitlines()]
  assert [r['program'] for r in records] == ['train', 'distill']
  for record in records:
    assert record['fixed_bytes'] > 0 and record['bytes_per_image'] > 0
    assert record['compiled_batches_per_device'] == [32, 64]
    fits = record['max_batch_per_device']
    assert list(fits) == [f'{gb}GB' for gb in memory.DEVICE_GB]
    assert 0 < fits['16GB'] < fits['141GB']
    assert record['bytes_at_batch'] == (record['fixed_bytes'] +
                                        record['bytes_per_image'] * 8)


def test_memory_fit_is_a_line_through_two_batches():
  fit = memory.fit({32: 5e9 + 32 * 1e8, 64: 5e9 + 64 * 1e8}, parts=4)
  assert fit['fixed_bytes'] == 5e9 and fit['bytes_per_image'] == 1e8
  # (16e9 - 5e9) / 1e8 = 110 images, in whole microbatches of 4: 108.
  assert fit['max_batch_per_device']['16GB'] == 108
  assert fit['max_batch_per_device']['141GB'] == 1360


def test_memory_needs_no_data_and_no_teacher_file():
  """CIFAR-10 distillation: TFDS data and a gs:// teacher, none of it read
  (lowering is what reads the config; compiling it is the suite's cost)."""
  config = config_lib.complete(load_config('cifar10_distill'))
  base, distill, from_config = benchmark.benchmark_stages(config)
  assert distill.objective == 'progressive' and from_config
  opt = optimization.optimization_for(config, distill)
  text = memory.lower_update(config, distill, opt, 2).as_text()
  assert '2x32x32x3' in text
