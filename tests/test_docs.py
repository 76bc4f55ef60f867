"""The documentation: the site builds, and the README stays short and true.

The site is built once, strictly, with the README's own build command (into
a temporary directory), so a broken link or anchor, a page missing from the
navigation or a docstring that does not render fails here. The README's
paper -> code map, its links and its results table are checked against the
code, the checkout and the Evaluating page.
"""

import ast
import glob
import os
import re
import shlex
import subprocess
import sys

import numpy as np
import pytest

from helpers import REPO

README = os.path.join(REPO, 'README.md')
DOCS = os.path.join(REPO, 'docs')
# The public names of the project's contract (CONTRACT.md: the Python API for
# users and the maths), as the reference page anchors them.
CONTRACT_NAMES = (
    'diffusion_distillation.api.load',
    'diffusion_distillation.api.Model',
    'diffusion_distillation.api.Model.sample',
    'diffusion_distillation.api.ModelError',
    'diffusion_distillation.api.config_names',
    'diffusion_distillation.api.student_steps',
    'diffusion_distillation.diffusion.process.eps_from_x',
    'diffusion_distillation.diffusion.process.x_from_eps',
    'diffusion_distillation.diffusion.process.v_from_x_eps',
    'diffusion_distillation.diffusion.process.x_from_v',
    'diffusion_distillation.diffusion.process.ddim_step',
    'diffusion_distillation.diffusion.process.distillation_target',
    'diffusion_distillation.diffusion.schedules.get_logsnr_schedule',
    'diffusion_distillation.models.unet.UNet',
)
README_SECTIONS = ('## Install', '## Quick start',
                   '## Results on the embedded digits', '## Python API',
                   '## The paper in the code', '## Documentation')


def read(path: str) -> str:
  with open(path) as f:
    return f.read()


def sh_blocks(text: str) -> list[str]:
  return re.findall(r'```sh\n(.*?)```', text, re.S)


@pytest.fixture(scope='module')
def site(tmp_path_factory):
  """The site, built with the README's command as printed (this
  interpreter's mkdocs for `.venv/bin/mkdocs`), into a temporary directory."""
  command = next(b.strip() for b in sh_blocks(read(README))
                 if 'mkdocs build' in b)
  program, *args = shlex.split(command)
  assert program == '.venv/bin/mkdocs' and '--strict' in args, command
  out = tmp_path_factory.mktemp('site')
  mkdocs = os.path.join(os.path.dirname(sys.executable), 'mkdocs')
  done = subprocess.run([mkdocs, *args, '--site-dir', str(out)], cwd=REPO,
                        env=dict(os.environ, NO_MKDOCS_2_WARNING='1'),
                        capture_output=True, text=True, timeout=300,
                        check=False)
  assert done.returncode == 0, done.stderr[-4000:]
  return out


@pytest.mark.heavy  # starts a process
def test_every_page_is_built(site):
  pages = sorted(os.path.relpath(p, DOCS)[:-3]
                 for p in glob.glob(os.path.join(DOCS, '*.md')))
  assert 'reference' in pages and 'troubleshooting' in pages
  for page in pages:
    html = 'index.html' if page == 'index' else f'{page}/index.html'
    assert (site / html).exists(), page


@pytest.mark.heavy  # starts a process
def test_the_reference_shows_the_contract_names(site):
  html = (site / 'reference' / 'index.html').read_text()
  missing = [name for name in CONTRACT_NAMES if f'id="{name}"' not in html]
  assert not missing, missing
  # The docstrings' sections rendered, not printed as text.
  assert not re.search(r'<p>(Args|Returns|Raises|Attributes):', html)
  assert html.count('doc-section-title') >= 10
  section = html.split('id="diffusion_distillation.api.Model.sample"', 1)[1]
  assert 'ModelError' in section.split('id="diffusion_distillation.api.', 1)[0]


@pytest.mark.heavy  # starts a process
def test_the_site_loads_nothing_from_the_network(site):
  for path in glob.glob(os.path.join(site, '**', '*.html'), recursive=True):
    text = read(path)
    assert 'fonts.googleapis.com' not in text, path
    assert 'fonts.gstatic.com' not in text, path


def test_the_readme_is_short_and_in_order():
  text = read(README)
  assert len(text.splitlines()) <= 250
  where = [text.index(section + '\n') for section in README_SECTIONS]
  assert where == sorted(where), README_SECTIONS
  assert 'bash tests/run.sh -m "not slow and not heavy"' in text  # fast tier


def test_the_readme_links_exist():
  links = re.findall(r'\]\(([^)#]+)(?:#[^)]*)?\)', read(README))
  assert len(links) >= 10
  missing = [link for link in links if not link.startswith('http') and
             not os.path.exists(os.path.join(REPO, link))]
  assert not missing, missing


def defined_names(path: str) -> set[str]:
  """Top-level functions and classes of a module, and `Class.method`."""
  names = set()
  for node in ast.parse(read(path)).body:
    if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
      names.add(node.name)
    if isinstance(node, ast.ClassDef):
      names.update(f'{node.name}.{item.name}' for item in node.body
                   if isinstance(item, ast.FunctionDef))
  return names


def test_the_paper_to_code_map_names_what_exists():
  section = read(README).split('## The paper in the code', 1)[1]
  rows = re.findall(r'^\| [^|]+ \| `([^`]+\.py)` \| `([^`]+)` \|$', section,
                    re.M)
  assert len(rows) >= 5
  papers = section.split('\n## ', 1)[0]
  for what in ('Algorithm 2', 'Appendix G', 'DDIM step', 'loss', 'stage loop'):
    assert what in papers, what
  for path, name in rows:
    assert name in defined_names(os.path.join(REPO, path)), (path, name)


def digits_table(text: str) -> str:
  section = text.split('## Results on the embedded digits', 1)[1]
  return re.search(r'^\| NFE \|.*?\n\n', section, re.S | re.M).group(0)


def test_the_readme_results_are_the_evaluating_pages():
  assert digits_table(read(README)) == digits_table(
      read(os.path.join(DOCS, 'evaluating.md')))


def test_the_official_fields_page_names_every_official_field():
  """Every field of the official configs (the schema's `official` column,
  less the authors' guided-distillation fields, which the Guided page
  covers) is named on the Faithfulness page, or its parent field is."""
  from diffusion_distillation.config import fields  # pylint: disable=g-import-not-at-top
  page = read(os.path.join(DOCS, 'faithfulness.md'))
  section = page.split('## Official config fields', 1)[1].split('\n## ', 1)[0]
  named = set(re.findall(r'`([^`]+)`', section))
  official = [f for f, d in fields.FIELDS.items()
              if d.official and not f.startswith('guidance.')
              and not d.official.startswith("the authors'")]
  assert len(official) > 40
  missing = [f for f in official
             if f not in named and not named & set(f.split('.')[1:])]
  assert not missing, missing


def test_the_maths_example_of_the_api_page_runs():
  """The Python API page's maths block: the distillation target is the x
  whose DDIM step lands on z_s."""
  import jax  # pylint: disable=g-import-not-at-top
  page = read(os.path.join(DOCS, 'api.md'))
  block = page.split('## The maths and the network', 1)[1]
  code = re.search(r'```python\n(.*?)```', block, re.S).group(1)
  keys = jax.random.split(jax.random.PRNGKey(0), 2)
  scope = {'z_t': jax.random.normal(keys[0], (2, 4, 4, 1)),
           'z_s': jax.random.normal(keys[1], (2, 4, 4, 1)),
           't': np.array([0.5, 0.6]), 's': np.array([0.4, 0.5])}
  exec(code, scope)  # pylint: disable=exec-used
  np.testing.assert_allclose(scope['z_s_again'], scope['z_s'], atol=1e-4)
