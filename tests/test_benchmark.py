"""The benchmark runs end to end on a tiny config and reports what it promises.

No timing thresholds: only that every record parses and holds positive numbers.
"""

import json
import math

from helpers import tiny_config
from diffusion_distillation.evaluation import benchmark
from diffusion_distillation.evaluation import profiling
from diffusion_distillation.pipeline import stages

PROGRAMS = ('forward', 'train', 'distill', 'sample_1step', 'sample')
POSITIVE = ('img_per_s', 'step_time_s', 'call_time_s', 'compile_s',
            'flops_per_img', 'achieved_tflops')


def _positive(value):
  return (isinstance(value, (int, float)) and not isinstance(value, bool)
          and math.isfinite(value) and value > 0)


def test_benchmark_json_lines():
  lines = []
  records = benchmark.benchmark(
      tiny_config(train__substeps=1), repeats=1, warmup=1, sample_steps=2,
      config_name='digits_tiny',
      emit=lambda r: lines.append(benchmark.to_json(r)),
      # Compiles about 3x faster (slower code): timings are not checked.
      compiler_options={'xla_backend_optimization_level': 0})
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
  assert base == plan[0] and not base.is_distillation
  assert distill == stages.plan_stages(external)[0] and from_config
  assert external.distillation.teacher_checkpoint_path == '/teacher'

  # No distillation section: a stand-in trained with the base optimizer.
  base_only = tiny_config()
  del base_only['distillation']
  base, distill, from_config = benchmark.benchmark_stages(base_only)
  assert base == plan[0] and not from_config
  assert distill.num_sample_steps == 4  # eval_sampling_num_steps // 2
  assert distill.kind == stages.DISTILLATION  # with the base optimizer
