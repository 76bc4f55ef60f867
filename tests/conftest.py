"""Test set-up: a persistent compilation cache, CPU, and shared workdirs."""

import os

import pytest

from helpers import REPO
from helpers import tiny_config

# Compiled programs are cached on disk, so the subprocess runs of the pipeline
# in the tests compile each program once per suite rather than once per run.
CACHE_DIR = os.environ.setdefault(
    'JAX_COMPILATION_CACHE_DIR', os.path.join(REPO, '.pytest_cache', 'jax'))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
# XLA without most of its optimization passes, as flax's own tests run: the
# suite's tiny programs compile in a fraction of the time, which outweighs
# their slower execution (CPU seconds of the suite's sampling tests -37%, of
# its training tests -16%). Every assertion holds either way: the tests
# compare runs of this suite with each other, goldens at float tolerances,
# never with numbers that a fully optimized program produced bit for bit.
os.environ.setdefault('JAX_DISABLE_MOST_OPTIMIZATIONS', 'true')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')


@pytest.fixture(scope='session')
def finished_workdir(tmp_path_factory):
  """A workdir in which the tiny pipeline (teacher + 3 stages) has finished."""
  from diffusion_distillation.pipeline import loop  # pylint: disable=g-import-not-at-top
  workdir = tmp_path_factory.mktemp('finished')
  summary = loop.run(tiny_config(), str(workdir))
  return workdir, summary

