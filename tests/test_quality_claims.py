"""The digits claim check reads the evaluation table correctly."""

from diffusion_distillation import quality_claims


def _results(student4, teacher4, teacher128):
  rows = [
      {'model': 'distilled', 'sampler': 'ddim', 'steps': 4, 'digits_fd': student4},
      {'model': 'teacher', 'sampler': 'ddim', 'steps': 4, 'digits_fd': teacher4},
      {'model': 'teacher', 'sampler': 'ddim', 'steps': 128, 'digits_fd': teacher128},
      {'model': 'teacher', 'sampler': 'ancestral', 'steps': 256, 'digits_fd': 0.1},
  ]
  return {'metric_names': ['digits_fd', 'digits_is'], 'rows': rows}


def test_claims_hold():
  claims = quality_claims.check(_results(3., 10., 2.))
  assert [c['holds'] for c in claims] == [True, True]
  assert claims[1]['reference'] == 2.  # the teacher's DDIM with most steps
  assert claims[0]['bound'] == 5.


def test_claims_fail():
  assert [c['holds'] for c in quality_claims.check(_results(6., 10., 4.))] == [
      False, True]
  assert [c['holds'] for c in quality_claims.check(_results(5., 10., 2.))] == [
      True, False]


def test_missing_row_fails():
  results = _results(3., 10., 2.)
  results['rows'] = results['rows'][1:]
  assert not any(c['holds'] for c in quality_claims.check(results))
