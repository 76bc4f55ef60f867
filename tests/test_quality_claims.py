"""The digits claim check reads the evaluation table correctly."""

import json
import subprocess

import pytest

from helpers import PYTHON, REPO
from diffusion_distillation.errors import UserError
from diffusion_distillation.evaluation import claims


def _results(student4, teacher4, teacher128):
  rows = [
      {'model': 'distilled', 'sampler': 'ddim', 'steps': 4, 'digits_fd': student4},
      {'model': 'teacher', 'sampler': 'ddim', 'steps': 4, 'digits_fd': teacher4},
      {'model': 'teacher', 'sampler': 'ddim', 'steps': 128, 'digits_fd': teacher128},
      {'model': 'teacher', 'sampler': 'ancestral', 'steps': 256, 'digits_fd': 0.1},
  ]
  return {'metric_names': ['digits_fd', 'digits_is'], 'rows': rows}


def test_claims_hold():
  result = claims.check(_results(3., 10., 2.))
  assert [c['holds'] for c in result] == [True, True]
  assert result[1]['reference'] == 2.  # the teacher's DDIM with most steps
  assert result[0]['bound'] == 5.


def test_claims_fail():
  assert [c['holds'] for c in claims.check(_results(6., 10., 4.))] == [
      False, True]
  assert [c['holds'] for c in claims.check(_results(5., 10., 2.))] == [
      True, False]


def test_a_step_count_without_rows_is_refused_naming_what_there_is():
  """Was: `null` claims (student and bound None) and exit status 1."""
  results = _results(3., 10., 2.)
  with pytest.raises(UserError, match=r'^steps=3: no 3-step student in the '
                     r'results; evaluated students: 4$'):
    claims.check(results, steps=3)
  results['rows'] = [r for r in results['rows'] if r['steps'] != 4 or
                     r['model'] == 'distilled']
  with pytest.raises(UserError, match='no teacher DDIM row for 4 steps .*'
                     r'--teacher_steps.*; teacher DDIM rows: 128$'):
    claims.check(results)


def _cli(workdir, *args):
  return subprocess.run(
      [PYTHON, '-m', 'diffusion_distillation.quality_claims',
       f'--workdir={workdir}', *args], cwd=REPO, capture_output=True,
      text=True, timeout=120, check=False)


@pytest.mark.heavy  # starts a process
def test_cli_exit_status(tmp_path):
  (tmp_path / 'eval').mkdir()
  (tmp_path / 'eval' / 'results.md').write_text('| the table |\n')
  results = tmp_path / 'eval' / 'results.json'
  results.write_text(json.dumps(_results(3., 10., 2.)))
  proc = _cli(tmp_path)
  assert proc.returncode == 0, proc.stderr
  lines = proc.stdout.splitlines()
  assert [json.loads(line)['holds'] for line in lines[:2]] == [True, True]
  assert '| the table |' in proc.stdout

  results.write_text(json.dumps(_results(6., 10., 4.)))
  assert _cli(tmp_path).returncode == 1  # a claim fails

  for workdir, says in (('missing', 'does not exist'),
                        ('empty', 'is not a training workdir'),
                        ('trained', 'diffusion_distillation.evaluate first')):
    (tmp_path / 'empty').mkdir(exist_ok=True)
    (tmp_path / 'trained').mkdir(exist_ok=True)
    (tmp_path / 'trained' / 'config.json').write_text('{}')
    proc = _cli(tmp_path / workdir)
    assert proc.returncode == 2 and 'Traceback' not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith('error: ') and says in last, last

  proc = _cli(tmp_path, '--steps=3')
  assert (proc.returncode, proc.stdout, proc.stderr) == (
      2, '', 'error: --steps=3: no 3-step student in the results; evaluated '
      'students: 4\n')
