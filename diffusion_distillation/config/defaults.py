"""Configs from the declarations: the defaults, sections, and completion.

Every config under configs/ starts from `default_config()` and states only
what it changes; `add_section` adds an optional section (distillation,
guidance) from its defaults. `complete` turns any config (a config file's, an
old workdir's config.json) into the full schema: fields it lacks take their
defaults, and a field the schema does not know is an error.
"""

import difflib

import ml_collections

from diffusion_distillation.config import fields as fields_lib
from diffusion_distillation.config.schema import ConfigError
from diffusion_distillation.config.schema import Same

FIELDS = fields_lib.FIELDS


def section_of(field: str) -> str:
  return field.split('.', 1)[0]


def _set(tree: dict, field: str, value):
  *parents, leaf = field.split('.')
  for part in parents:
    tree = tree.setdefault(part, {})
  tree[leaf] = value


def flat_fields(tree, prefix: str = '') -> dict:
  """A (nested) config or dict as `{'a.b': value}`, values as they are."""
  flat = {}
  for key, value in tree.items():
    if hasattr(value, 'items'):
      flat.update(flat_fields(value, f'{prefix}{key}.'))
    else:
      flat[f'{prefix}{key}'] = value
  return flat


def _get(tree, field: str):
  for part in field.split('.'):
    tree = tree[part]
  return tree


def _source(default: Same, sections) -> str:
  """The first of a `Same` default's fields whose section is in `sections`."""
  return next(f for f in default.fields if section_of(f) in sections)


def _link(config, field: str, source: str):
  """`config.<field>` follows `config.<source>` (`get_ref(...).identity()`)."""
  parent, _, leaf = source.rpartition('.')
  ref = _get(config, parent).get_ref(leaf).identity()
  parent, _, leaf = field.rpartition('.')
  _get(config, parent)[leaf] = ref


# The sections every config has (the optional ones come with add_section).
ALWAYS = frozenset(section_of(f) for f in FIELDS) - set(
    fields_lib.OPTIONAL_SECTIONS)


def _same_fields(sections) -> dict:
  return {f: d.default for f, d in FIELDS.items()
          if isinstance(d.default, Same) and section_of(f) in sections}


def _plain_defaults(fields) -> dict:
  """The nested defaults of `fields` (dotted), but for those that follow
  another field (`Same`: linked once the tree is a ConfigDict)."""
  tree = {}
  for field in fields:
    if not isinstance(FIELDS[field].default, Same):
      _set(tree, field, FIELDS[field].default)
  return tree


def default_config() -> ml_collections.ConfigDict:
  """The defaults of every field outside the optional sections."""
  config = ml_collections.ConfigDict(_plain_defaults(
      f for f, d in FIELDS.items() if d.filled and section_of(f) in ALWAYS))
  for field, default in _same_fields(ALWAYS).items():
    _link(config, field, _source(default, ALWAYS))
  return config


def add_section(config, section: str, **values):
  """Adds optional `section` with its defaults, `values` changed, in place.

  A default that follows another field (`Same`) is linked to it; fields of
  other sections that follow this one (eval.teacher_max_steps follows
  distillation.start_num_steps) are linked to it anew.
  """
  assert section in fields_lib.OPTIONAL_SECTIONS, section
  prefix = section + '.'
  names = {f[len(prefix):] for f, d in FIELDS.items()
           if f.startswith(prefix) and d.filled}
  unknown = sorted(set(values) - names)
  if unknown:
    raise ConfigError(f'config.{section}: no field {unknown}')
  tree = _plain_defaults(prefix + name for name in names - set(values)).get(
      section, {})
  for name, value in values.items():
    _set(tree, name, value)
  config[section] = tree
  sections = set(config.keys())
  for field, default in _same_fields(sections).items():
    source = _source(default, sections)
    if (field.startswith(prefix) and field[len(prefix):] not in values or
        not field.startswith(prefix) and source.startswith(prefix)):
      _link(config, field, source)
  return config


def _suggestion(field: str, known) -> str:
  close = difflib.get_close_matches(field, known, n=1)
  return f'; did you mean {close[0]!r}?' if close else ''


def complete(config) -> ml_collections.ConfigDict:
  """`config` (ConfigDict or dict) with every absent field at its default.

  Optional sections stay absent when absent. Raises ConfigError naming every
  field the schema does not declare. References are resolved: the result is
  a plain copy, safe to change.
  """
  if isinstance(config, ml_collections.ConfigDict):
    config = config.copy_and_resolve_references().to_dict()
  flat = flat_fields(config)
  unknown = [f for f in flat if f not in FIELDS]
  if unknown:
    raise ConfigError('; '.join(
        f'config.{f}: no such field{_suggestion(f, FIELDS)}'
        for f in sorted(unknown)))
  sections = {section_of(f) for f in flat} | ALWAYS
  tree = _nested_copy(config)
  # In declaration order: a `Same` default's source is filled before it.
  for field, declared in FIELDS.items():
    if (declared.filled and field not in flat and
        section_of(field) in sections):
      default = declared.default
      if isinstance(default, Same):
        default = _get(tree, _source(default, sections))
      _set(tree, field, default)
  return ml_collections.ConfigDict(tree)


def _nested_copy(tree) -> dict:
  return {k: _nested_copy(v) if hasattr(v, 'items') else v
          for k, v in tree.items()}
