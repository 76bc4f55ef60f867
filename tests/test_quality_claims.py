"""The digits claim check reads the evaluation table correctly."""

import json
import subprocess

from helpers import PYTHON, REPO
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


def test_missing_row_fails():
  results = _results(3., 10., 2.)
  results['rows'] = results['rows'][1:]
  assert not any(c['holds'] for c in claims.check(results))


def _cli(workdir):
  return subprocess.run(
      [PYTHON, '-m', 'diffusion_distillation.quality_claims',
       f'--workdir={workdir}'], cwd=REPO, capture_output=True, text=True,
      timeout=120, check=False)


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

  proc = _cli(tmp_path / 'not_evaluated')
  assert proc.returncode == 2 and 'Traceback' not in proc.stderr
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith('error: ') and 'diffusion_distillation.evaluate' in last
