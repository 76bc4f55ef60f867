"""Timing, FLOPs and memory of compiled XLA programs, for the benchmark.

Times are medians of calls that each run until `block_until_ready`. FLOPs come
from XLA's cost analysis of the per-device program, times the device count.
`utilisation` is achieved / peak FLOP/s of all devices, for known device kinds
(None on CPU and unknown kinds). `peak_memory_bytes` is the device allocator's
peak so far in the process (None where unsupported, e.g. CPU);
`program_memory_bytes` is XLA's static estimate for the program alone
(arguments + outputs + temporaries - donated aliases).
"""

import statistics
import time
from typing import Any, Callable, Optional

import jax

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


def peak_tflops(device_kind: str, dtype: str) -> Optional[float]:
  """Peak dense TFLOP/s of one device of this kind, or None if unknown."""
  kind = device_kind.lower()
  for pattern, peaks in PEAK_TFLOPS:
    if pattern in kind:
      return peaks.get(dtype)
  return None


def flops(compiled) -> Optional[float]:
  """FLOPs of one call of a compiled program (per device), if XLA counts them.

  XLA counts a loop body once, whatever the trip count.
  """
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):  # older JAX: one dict per module
    analysis = analysis[0] if analysis else None
  value = (analysis or {}).get('flops')
  return float(value) if value is not None and value > 0 else None


def program_memory(compiled) -> Optional[int]:
  """XLA's static memory estimate for the program alone, if it has one."""
  try:
    m = compiled.memory_analysis()
  except Exception:  # pylint: disable=broad-except
    return None
  if m is None:
    return None
  return int(m.argument_size_in_bytes + m.output_size_in_bytes +
             m.temp_size_in_bytes - m.alias_size_in_bytes)


def peak_memory() -> Optional[int]:
  """The largest allocator peak of this process's devices, if they report it."""
  peaks = []
  for device in jax.local_devices():
    try:
      stats = device.memory_stats()
    except Exception:  # pylint: disable=broad-except
      stats = None
    if stats and 'peak_bytes_in_use' in stats:
      peaks.append(int(stats['peak_bytes_in_use']))
  return max(peaks) if peaks else None


def compile_timed(jitted, *args, options=None):
  """`(compiled, seconds)`: `jitted` lowered for `args` and compiled."""
  t0 = time.perf_counter()
  compiled = jitted.lower(*args).compile(options)
  return compiled, time.perf_counter() - t0


def time_calls(call: Callable[[], Any], *, repeats: int, warmup: int):
  """Runs `call` warmup + repeats times; returns the timed durations (s)."""
  for _ in range(warmup):
    jax.block_until_ready(call())
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(call())
    times.append(time.perf_counter() - t0)
  return times


def time_calls_interleaved(calls: dict[str, Callable[[], Any]], *,
                           repeats: int, warmup: int):
  """Like `time_calls` for several programs, taking turns each repeat.

  So that a slow spell of a shared machine hits all of them alike.
  """
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


def program_record(name, *, times, compile_s, images_per_call,
                   steps_per_call, flops_per_img, device_kind, dtype,
                   **extra) -> dict:
  """One program's record: throughput, times, FLOPs, utilisation, memory."""
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
      peak_memory_bytes=peak_memory(),
      **extra)
