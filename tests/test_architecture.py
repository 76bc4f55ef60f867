"""The package's shape: dependencies run one way; modules, functions short.

Read from the source with `ast` (nothing is imported), lazy imports inside
functions included.
"""

import ast
import os

import pytest

from helpers import REPO

PACKAGE = 'diffusion_distillation'
# Lower layers never import higher ones: config -> maths / parallelism ->
# models / data -> objectives -> pipeline -> evaluation / API -> command line.
LAYERS = {
    'errors': 0,
    'files': 0,
    'paths': 0,
    'config': 1,
    'diffusion': 2,
    'parallel': 2,
    'models': 3,
    'data': 3,
    'objectives': 4,
    'pipeline': 5,
    'evaluation': 6,
    'api': 6,
    'cli': 7,
}
TOP = 8  # the package itself and the `python -m diffusion_distillation.X` shims
# Packages of one layer that stay apart: the maths takes arrays, never a
# microbatch or a device (gradient accumulation slices its inputs).
APART = (('diffusion', 'parallel'),)
MAX_MODULE_LINES = 400
# One cohesive concept each: ports of reference networks, layer by layer.
LONG_MODULES = {'diffusion_distillation.models.unet',
                'diffusion_distillation.evaluation.metrics.inception'}
MAX_FUNCTION_LINES = 60
# Where one function read top to bottom is clearer than fragments: the
# trainer (paper Algorithm 2, as flax's `train_and_evaluate`), up to this.
ONE_READ = {'diffusion_distillation.pipeline.loop.run': 130}


def module_files() -> dict[str, str]:
  """Dotted module name -> file path, for every module of the package."""
  modules = {}
  root = os.path.join(REPO, PACKAGE)
  for directory, _, files in os.walk(root):
    for name in files:
      if not name.endswith('.py'):
        continue
      path = os.path.join(directory, name)
      parts = os.path.relpath(path, REPO)[:-3].split(os.sep)
      if parts[-1] == '__init__':
        parts = parts[:-1]
      modules['.'.join(parts)] = path
  return modules


MODULES = module_files()


def parse(name):
  with open(MODULES[name]) as f:
    return ast.parse(f.read(), MODULES[name])


def imports_of(name: str) -> set[str]:
  """The package's modules that `name` imports (anywhere in the file)."""
  found = set()
  for node in ast.walk(parse(name)):
    if isinstance(node, ast.Import):
      targets = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      targets = [f'{node.module}.{alias.name}' for alias in node.names]
      targets = [t if t in MODULES else node.module for t in targets]
    else:
      continue
    found.update(t for t in targets if t in MODULES and t != name)
  return found


GRAPH = {name: imports_of(name) for name in MODULES}


def layer(name: str) -> int:
  parts = name.split('.')
  return LAYERS.get(parts[1], TOP) if len(parts) > 1 else TOP


def test_the_graph_sees_the_package():
  assert 'diffusion_distillation.pipeline.loop' in GRAPH
  assert 'diffusion_distillation.pipeline.checkpoints' in GRAPH[
      'diffusion_distillation.pipeline.loop']


def test_no_import_cycle():
  state = {}

  def visit(name, path):
    if state.get(name) == 'done':
      return
    assert state.get(name) != 'open', ' -> '.join(path + [name])
    state[name] = 'open'
    for target in sorted(GRAPH[name]):
      visit(target, path + [name])
    state[name] = 'done'

  for name in sorted(GRAPH):
    visit(name, [])


def test_dependencies_run_one_way():
  upward = [f'{name} imports {target}'
            for name, targets in GRAPH.items() for target in targets
            if layer(target) > layer(name)]
  assert not upward, '\n'.join(upward)


def test_packages_of_one_layer_stay_apart():
  package = lambda name: name.split('.')[1] if '.' in name else ''
  across = [f'{name} imports {target}'
            for name, targets in GRAPH.items() for target in targets
            for a, b in APART
            if {package(name), package(target)} == {a, b}]
  assert not across, '\n'.join(across)


@pytest.mark.parametrize('name', sorted(MODULES))
def test_module_and_function_lengths(name):
  with open(MODULES[name]) as f:
    lines = len(f.read().splitlines())
  if name not in LONG_MODULES:
    assert lines <= MAX_MODULE_LINES, f'{name}: {lines} lines'
  long_functions = [
      f'{node.name} ({node.end_lineno - node.lineno + 1} lines)'
      for node in ast.walk(parse(name))
      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
      and node.end_lineno - node.lineno + 1 > ONE_READ.get(
          f'{name}.{node.name}', MAX_FUNCTION_LINES)]
  assert not long_functions, f'{name}: {long_functions}'
