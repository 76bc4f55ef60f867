"""`python -m diffusion_distillation.benchmark`: see cli/benchmark.py."""

from diffusion_distillation.cli import benchmark

if __name__ == '__main__':
  benchmark.run()
