"""notebooks/quickstart.ipynb runs end to end, so it cannot rot.

Executed by the docs' headless command (nbclient's `jupyter execute
--inplace`) on a copy of the notebook and of the suite's finished tiny
workdir, after a small evaluation wrote its `eval/results.json`; the workdir
reaches the notebook through `DD_WORKDIR`, as a user would point it at their
own run. The kernel is this interpreter (a kernelspec written for the test),
whatever kernels the machine has.
"""

import json
import os
import re
import shlex
import shutil
import subprocess
import sys

import nbformat
import pytest

from diffusion_distillation.evaluation import evaluate

from helpers import REPO

pytestmark = pytest.mark.heavy  # processes, training: not the fast tier

NOTEBOOK = os.path.join(REPO, 'notebooks', 'quickstart.ipynb')


@pytest.fixture
def evaluated_workdir(finished_workdir, tmp_path):
  """A copy of the finished workdir with a small evaluation's results."""
  workdir = tmp_path / 'digits'
  shutil.copytree(finished_workdir[0], workdir)
  evaluate.run_evaluation(str(workdir), num_samples=12, samplers='ddim',
                          teacher_steps=[1, 2, 4], batch_size=12,
                          cache_dir=str(tmp_path / 'cache'), print_table=False)
  return workdir


@pytest.fixture
def this_python_kernel(tmp_path, monkeypatch):
  """A kernelspec running `sys.executable`, first on the Jupyter path."""
  spec = tmp_path / 'jupyter' / 'kernels' / 'dd-test'
  spec.mkdir(parents=True)
  (spec / 'kernel.json').write_text(json.dumps({
      'argv': [sys.executable, '-m', 'ipykernel_launcher', '-f',
               '{connection_file}'],
      'display_name': 'diffusion_distillation tests', 'language': 'python'}))
  monkeypatch.setenv('JUPYTER_PATH', str(tmp_path / 'jupyter'))
  return 'dd-test'


def _outputs(notebook):
  return [o for cell in notebook.cells if cell.cell_type == 'code'
          for o in cell.outputs]


def readme_headless_command() -> list[str]:
  """The command that runs the notebook without a browser, as the Python API
  page (docs/api.md) prints it."""
  with open(os.path.join(REPO, 'docs', 'api.md')) as f:
    readme = f.read()
  return shlex.split(re.search(r'`(\.venv/bin/jupyter execute [^`]*)`',
                               readme).group(1))


def test_the_quickstart_notebook_runs_headless_as_the_readme_says(
    evaluated_workdir, this_python_kernel, tmp_path):
  """The docs' command on a copy of the notebook (this interpreter's
  kernel): the outputs and figures stay in the file (`--inplace`)."""
  notebook = nbformat.read(NOTEBOOK, as_version=4)
  assert not _outputs(notebook), 'commit the notebook without outputs'
  copy = tmp_path / 'notebooks' / 'quickstart.ipynb'
  copy.parent.mkdir()
  shutil.copy(NOTEBOOK, copy)
  jupyter, *args = readme_headless_command()
  assert jupyter == '.venv/bin/jupyter' and args[-1] == (
      'notebooks/quickstart.ipynb')
  done = subprocess.run(
      [os.path.join(os.path.dirname(sys.executable), 'jupyter'), *args,
       f'--kernel_name={this_python_kernel}'], cwd=tmp_path,
      env=dict(os.environ, DD_WORKDIR=str(evaluated_workdir)),
      capture_output=True, text=True, timeout=600, check=False)
  assert done.returncode == 0, done.stderr[-3000:]
  outputs = _outputs(nbformat.read(copy, as_version=4))
  text = ''.join(o.get('text', '') for o in outputs)
  assert 'showing [1, 2, 4]' in text  # the students the workdir has
  assert "('distilled', 4): (16, 8, 8, 1)" in text
  assert "('distilled', 'ddim', 1)" in text  # the quality table was read
  figures = [o for o in outputs if 'image/png' in o.get('data', {})]
  assert len(figures) == 2  # the sample grids, and quality against steps
  assert not [o for o in outputs if o.output_type == 'error']
