"""notebooks/quickstart.ipynb runs end to end, so it cannot rot.

Executed with nbclient on a copy of the suite's finished tiny workdir, after
a small evaluation wrote its `eval/results.json`; the workdir reaches the
notebook through `DD_WORKDIR`, as a user would point it at their own run. The
kernel is this interpreter (a kernelspec written for the test), whatever
kernels the machine has.
"""

import json
import os
import shutil
import sys

import nbclient
import nbformat
import pytest

from diffusion_distillation.evaluation import evaluate

from helpers import REPO

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


def test_the_quickstart_notebook_runs(evaluated_workdir, this_python_kernel,
                                      monkeypatch):
  monkeypatch.setenv('DD_WORKDIR', str(evaluated_workdir))
  notebook = nbformat.read(NOTEBOOK, as_version=4)
  assert not _outputs(notebook), 'commit the notebook without outputs'
  nbclient.NotebookClient(notebook, timeout=600,
                          kernel_name=this_python_kernel).execute(
                              cwd=os.path.dirname(NOTEBOOK))
  outputs = _outputs(notebook)
  text = ''.join(o.get('text', '') for o in outputs)
  assert 'showing [1, 2, 4]' in text  # the students the workdir has
  assert "('distilled', 4): (16, 8, 8, 1)" in text
  assert "('distilled', 'ddim', 1)" in text  # the quality table was read
  figures = [o for o in outputs if 'image/png' in o.get('data', {})]
  assert len(figures) == 2  # the sample grids, and quality against steps
  assert not [o for o in outputs if o.output_type == 'error']
