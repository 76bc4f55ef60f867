"""The config schema: every field declared once, read without fallbacks.

The source checks read the package and configs/ with `ast` (nothing is
imported): a config field read with a fallback default (`config.x.get('y',
default)`) or a field the code reads that the schema does not declare fails.
"""

import ast
import configparser
import json
import os
import pathlib
import re

import pytest

from diffusion_distillation import config as config_lib
from diffusion_distillation.config import schema
from diffusion_distillation.config import table
from helpers import REPO
from helpers import load_config

FIELDS = config_lib.FIELDS
# Names that hold a config, and attributes that do (`ctx.config`).
CONFIG_NAMES = ('config', 'cfg', '_config')
MODULES = ('tf', 'jax')  # whose `.config` is not ours
# ConfigDict's own methods, allowed on a section.
METHODS = ('to_dict', 'to_json', 'to_json_best_effort', 'get_ref', 'items',
           'keys', 'values', 'update', 'lock', 'unlock', 'copy',
           'copy_and_resolve_references')
OLD_CONFIG = pathlib.Path(__file__).parent / 'data' / 'digits_config_v16.json'


def _chain(node):
  """(root, ['a', 'b']) of an attribute chain `root.a.b`; root an ast node."""
  parts = []
  while isinstance(node, ast.Attribute):
    parts.append(node.attr)
    node = node.value
  return node, parts[::-1]


def _config_path(node, aliases):
  """The config path an expression reads (['train'] for `config.train`,
  `ctx.config.train` or an alias of either), or None: not a config."""
  root, parts = _chain(node)
  if not isinstance(root, ast.Name) or root.id in MODULES:
    return None
  names = [root.id] + parts
  for i in reversed(range(len(names))):
    if names[i] in CONFIG_NAMES:
      return names[i + 1:]
  return aliases[root.id] + parts if root.id in aliases else None


def _declared(path) -> bool:
  """`path` is a declared field or a section of declared fields."""
  dotted = '.'.join(path)
  return any(f == dotted or f.startswith(dotted + '.') for f in FIELDS)


def config_reads(source: str):
  """(fallbacks, undeclared): 'line: code' of each bad config read."""
  fallbacks, undeclared = [], []
  for function in ast.walk(ast.parse(source)):
    if not isinstance(function, ast.FunctionDef):
      continue
    aliases = {}
    for node in ast.walk(function):
      if (isinstance(node, ast.Assign) and len(node.targets) == 1 and
          isinstance(node.targets[0], ast.Name)):
        path = _config_path(node.value, aliases)
        if path is not None:
          aliases[node.targets[0].id] = path
    for node in ast.walk(function):
      if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
        if (node.func.attr == 'get' and
            _config_path(node.func.value, aliases) is not None):
          fallbacks.append(f'{node.lineno}: {ast.unparse(node)}')
      if isinstance(node, ast.Attribute):
        path = _config_path(node, aliases)
        if not path or path[-1] in METHODS + ('get',):
          continue
        # A leaf's own attributes (`config.dataset.name.startswith`) are
        # not config reads.
        if not (_declared(path) or any('.'.join(path[:i]) in FIELDS
                                       for i in range(1, len(path)))):
          undeclared.append(f'{node.lineno}: {ast.unparse(node)}')
  return sorted(set(fallbacks)), sorted(set(undeclared))


def _sources():
  roots = [os.path.join(REPO, 'diffusion_distillation'),
           os.path.join(REPO, 'configs')]
  for root in roots:
    for directory, _, files in os.walk(root):
      for name in sorted(files):
        if name.endswith('.py'):
          yield os.path.join(directory, name)


def test_the_source_check_finds_fallbacks_and_undeclared_fields():
  fallbacks, undeclared = config_reads(
      'def f(config, ctx):\n'
      '  t = config.train\n'
      "  a = t.get('avg_type', '')\n"
      "  b = ctx.config.eval.get('metric')\n"
      '  c = config.train.no_such_field\n'
      '  d = t.learning_rate + config.dataset.name.count("x")\n')
  assert [f.split(':')[0] for f in fallbacks] == ['3', '4']
  assert undeclared == ['5: config.train.no_such_field']


def test_no_config_field_is_read_with_a_fallback_or_undeclared():
  bad = []
  for path in _sources():
    with open(path) as f:
      fallbacks, undeclared = config_reads(f.read())
    rel = os.path.relpath(path, REPO)
    bad += [f'{rel}:{line} reads with a fallback' for line in fallbacks]
    bad += [f'{rel}:{line} is not declared' for line in undeclared]
  assert not bad, '\n'.join(bad)


def test_every_default_passes_its_own_check_and_follows_a_declared_field():
  for field, declared in FIELDS.items():
    assert declared.doc and declared.rerun in schema.RERUN_RULES, field
    if isinstance(declared.default, schema.Same):
      earlier = list(FIELDS)[:list(FIELDS).index(field)]
      assert all(f in earlier for f in declared.default.fields), field
    elif declared.filled:
      assert declared.problem(declared.default) is None, field
  config_lib.validate_config(config_lib.complete(config_lib.default_config()),
                             device_count=1, process_count=1)


def test_a_config_json_written_before_the_schema_opens_as_it_was():
  """Written by the code before this schema: the fields it lacks take their
  defaults, and the current digits config continues it without a change."""
  saved = json.loads(OLD_CONFIG.read_text())
  config = config_lib.complete(saved)
  assert config.model.cond_drop_prob == 0. and config.eval.guidance == ()
  assert config.eval.student_samplers == ('ddim',)
  assert config_lib.check_rerun(saved, load_config('digits')) == (
      config_lib.Rerun([], False))


def test_complete_names_every_unknown_field():
  with pytest.raises(config_lib.ConfigError) as e:
    config_lib.complete({'train': {'lerning_rate': 1.}, 'zzz': 1})
  assert str(e.value) == (
      "config.train.lerning_rate: no such field; did you mean "
      "'train.learning_rate'?; config.zzz: no such field")


def test_validation_names_every_bad_field():
  config = config_lib.complete(config_lib.default_config())
  config.train.learning_rate = -1.
  config.eval.num_samples = 1
  config.model.args.ch = 48
  with pytest.raises(config_lib.ConfigError) as e:
    config_lib.validate_config(config, device_count=1, process_count=1)
  message = str(e.value)
  for field in ('train.learning_rate', 'eval.num_samples', 'model.args.ch'):
    assert f'config.{field}: must be' in message
  assert 'multiple of 32' in message


def test_a_rerun_names_every_field_it_cannot_change():
  saved = config_lib.complete(config_lib.default_config()).to_dict()
  config = config_lib.complete(config_lib.default_config())
  config.seed, config.model.mean_type = 1, 'eps'
  config.train.learning_rate = 1e-3  # applies from now on
  with pytest.raises(config_lib.ConfigError) as e:
    config_lib.check_rerun(saved, config)
  assert str(e.value) == (
      "config.model.mean_type is 'eps' but the workdir was created with 'v'; "
      'config.seed is 1 but the workdir was created with 0; a rerun cannot '
      'change them (use a new --workdir)')
  config.seed, config.model.mean_type = 0, 'v'
  config.train.num_train_steps = saved['train']['num_train_steps'] - 1
  with pytest.raises(config_lib.ConfigError,
                     match=r'config\.train\.num_train_steps is 1499 but the '
                           r'workdir was created with 1500 \(a rerun may only '
                           r'raise it, to train the teacher on\)'):
    config_lib.check_rerun(saved, config)


def test_the_field_table_is_current():
  """docs/config_fields.md, the site's Config fields page, is `python -m
  diffusion_distillation.config.table` (tests/test_docs.py checks that the
  Faithfulness page names every official field)."""
  path = os.path.join(REPO, 'docs', 'config_fields.md')
  with open(path) as f:
    assert f.read() == table.markdown(), (
        'regenerate: python -m diffusion_distillation.config.table > '
        'docs/config_fields.md')


def test_setup_cfg_installs_every_package_and_the_configs():
  parser = configparser.ConfigParser()
  parser.read(os.path.join(REPO, 'setup.cfg'))
  listed = set(parser['options']['packages'].split())
  found = {os.path.relpath(d, REPO).replace(os.sep, '.')
           for d, _, files in os.walk(os.path.join(REPO, 'diffusion_distillation'))
           if '__init__.py' in files}
  assert listed == found | {'diffusion_distillation.configs'}
  assert parser['options']['package_dir'].split() == [
      'diffusion_distillation.configs', '=', 'configs']


@pytest.mark.parametrize('args, wide', [
    # An image folder's network without attention levels: only the middle
    # block attends, on its 64 channels (level 0's 32 do not matter).
    (dict(ch=32, ch_mult=(1, 2), attn_resolutions=()), None),
    (dict(ch=32, ch_mult=(1,), attn_resolutions=()), '[32]'),  # the middle
    (dict(ch=32, ch_mult=(1, 2), attn_resolutions=(32,)), '[32]'),
    # Level 0 (96) has no attention; the middle block's 288 has.
    (dict(ch=96, ch_mult=(1, 2, 3), attn_resolutions=(16,)), '[288]'),
])
def test_head_dim_is_checked_on_the_layers_that_attend(args, wide):
  config = config_lib.complete(load_config('image_folder'))
  config.dataset.path = '/unused'
  config.dataset.image_size = 32
  config.model.args.update(num_heads=None, head_dim=64, **args)
  if wide is None:
    config_lib.validate_config(config, device_count=1, process_count=1)
    return
  with pytest.raises(config_lib.ConfigError,
                     match=rf'config\.model\.args\.head_dim: 64 must divide '
                           rf'the channel counts {re.escape(wide)}'):
    config_lib.validate_config(config, device_count=1, process_count=1)


def test_one_check_for_a_sampler_in_a_field_a_flag_and_the_api():
  from diffusion_distillation.config import choices  # pylint: disable=g-import-not-at-top
  config = config_lib.complete(config_lib.default_config())
  config.sampler = 'euler'
  with pytest.raises(config_lib.ConfigError) as e:
    config_lib.validate_config(config, device_count=1, process_count=1)
  problem = choices.SAMPLER.problem('euler')
  assert f'config.sampler: {problem}' in str(e.value)
  with pytest.raises(ValueError, match=f'sampler: {re.escape(problem)}'):
    choices.require(choices.SAMPLER, 'sampler', 'euler', ValueError)


def test_a_path_saved_relative_by_an_earlier_version_resumes(tmp_path,
                                                             monkeypatch):
  monkeypatch.chdir(tmp_path)
  config = config_lib.complete(load_config('image_folder'))
  config.dataset.path = 'my_images'
  saved = config.to_dict()  # as config.json held it before
  config.dataset.path = str(tmp_path / 'my_images')  # as written now
  assert config_lib.check_rerun(saved, config).notices == []
  config.dataset.path = str(tmp_path / 'other_images')
  with pytest.raises(config_lib.ConfigError, match=r'config\.dataset\.path'):
    config_lib.check_rerun(saved, config)
