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
os.environ.setdefault('JAX_PLATFORMS', 'cpu')


@pytest.fixture(scope='session')
def finished_workdir(tmp_path_factory):
  """A workdir in which the tiny pipeline (teacher + 3 stages) has finished."""
  from diffusion_distillation.pipeline import loop  # pylint: disable=g-import-not-at-top
  workdir = tmp_path_factory.mktemp('finished')
  summary = loop.run(tiny_config(), str(workdir))
  return workdir, summary


def pytest_collection_modifyitems(items):
  """The longest files first: the end-to-end ones (`slow`), then those that
  start processes (`heavy`), then the rest, each file's tests in their
  order. Two workers take whole files (`--dist loadfile`) in this order, so
  no long end-to-end file is left to run alone on one core at the end."""
  def rank(item):
    return (0 if item.get_closest_marker('slow') else
            1 if item.get_closest_marker('heavy') else 2)

  first = {}
  for item in items:
    first[item.path] = min(first.get(item.path, 2), rank(item))
  order = {item.nodeid: i for i, item in enumerate(items)}
  items.sort(key=lambda item: (first[item.path], order[item.nodeid]))
