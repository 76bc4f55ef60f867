"""What a config field is: its default, its check, its doc and its rerun rule.

`fields.py` declares every field once with a `Field`; everything else
(defaults, completion of an old `config.json`, validation, the rerun check,
TensorBoard's hyperparameters and the field table in docs/config_fields.md)
reads those declarations.
"""

import dataclasses
import math
from typing import Any, ClassVar, Optional

from diffusion_distillation.errors import UserError

# How a rerun on an existing workdir may change a field.
FREE = 'free'  # changes nothing finished work means (logging, checkpoints)
FUTURE = 'future'  # applies to the updates from now on
EXTENDS = 'extends'  # more base updates: the teacher trains on
REFUSED = 'refused'  # would change what finished stages mean
RERUN_RULES = (FREE, FUTURE, EXTENDS, REFUSED)


class ConfigError(UserError):
  """A config field holds a value the pipeline cannot run with."""


class Same:
  """A default that is another field's value: the first of `fields` whose
  section the config has (linked with `get_ref` in a ConfigDict)."""

  def __init__(self, *fields: str):
    self.fields = fields

  def __repr__(self):
    return f'Same{self.fields}'


def _is_int(value) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclasses.dataclass(frozen=True)
class Check:
  """A field's type and range: `problem(value)` says what is wrong, or None.

  kind: 'int', 'number', 'bool', 'str', 'choice', or a sequence of one of
  them ('ints', 'numbers', 'choices'). lo / hi bound numbers (hi excluded
  when `hi_open`); `multiple` for ints; `choices` for choice kinds;
  `none`: None is allowed; `inf`: +inf is allowed.
  """
  kind: str
  lo: Optional[float] = None
  hi: Optional[float] = None
  hi_open: bool = False
  lo_open: bool = False
  multiple: int = 0
  choices: tuple = ()
  none: bool = False
  inf: bool = False
  nonempty: bool = False

  def describe(self) -> str:
    """The allowed values in words (for the field table)."""
    text = {'int': 'int', 'number': 'number', 'bool': 'bool', 'str': 'text',
            'choice': 'one of', 'ints': 'ints', 'numbers': 'numbers',
            'choices': 'any of'}[self.kind]
    if self.choices:
      text += ' ' + ', '.join(f'`{c}`' for c in self.choices)
    bounds = []
    show = lambda v: f'{v:g}' if isinstance(v, float) else str(v)
    if self.lo is not None:
      bounds.append(f'{">" if self.lo_open else ">="} {show(self.lo)}')
    if self.hi is not None:
      bounds.append(f'{"<" if self.hi_open else "<="} {show(self.hi)}')
    if self.multiple:
      bounds.append(f'multiple of {self.multiple}')
    if self.inf:
      bounds.append('or inf')
    if self.none:
      bounds.append('or None')
    return ' '.join([text] + bounds)

  def problem(self, value) -> Optional[str]:
    if value is None:
      return None if self.none else f'must be set ({self.describe()})'
    if self.kind in ('ints', 'numbers', 'choices'):
      if not isinstance(value, (list, tuple)):
        return f'must be a sequence ({self.describe()}), got {value!r}'
      if self.nonempty and not value:
        return f'needs at least one value ({self.describe()})'
      item = dataclasses.replace(self, kind=self.kind[:-1], nonempty=False,
                                 none=False)
      for v in value:
        wrong = item.problem(v)
        if wrong:
          return f'holds {v!r}: {wrong}'
      return None
    return self._scalar_problem(value)

  def _scalar_problem(self, value) -> Optional[str]:
    expect = f'must be {self.describe()}, got {value!r}'
    if self.kind == 'bool':
      return None if isinstance(value, bool) else expect
    if self.kind == 'str':
      return None if isinstance(value, str) else expect
    if self.kind == 'choice':
      return None if value in self.choices else expect
    if not (_is_int(value) if self.kind == 'int' else _is_number(value)):
      return expect
    if math.isnan(value) or (math.isinf(value) and not (self.inf and
                                                        value > 0)):
      return (f'must be a finite number, got {value!r} (allowed: '
              f'{self.describe()})')

    if self.lo is not None and (value < self.lo or
                                (self.lo_open and value == self.lo)):
      return expect
    if self.hi is not None and (value > self.hi or
                                (self.hi_open and value == self.hi)):
      return expect
    if self.multiple and value % self.multiple:
      return expect
    return None


def integer(lo=None, **kw) -> Check:
  return Check('int', lo=lo, **kw)


def number(lo=None, hi=None, **kw) -> Check:
  return Check('number', lo=lo, hi=hi, **kw)


def fraction(**kw) -> Check:
  """A number in [0, 1): decay rates, dropout, Adam's betas."""
  return Check('number', lo=0., hi=1., hi_open=True, **kw)


def one_of(*choices, **kw) -> Check:
  return Check('choice', choices=tuple(choices), **kw)


BOOL = Check('bool')
TEXT = Check('str')


@dataclasses.dataclass(frozen=True)
class Field:
  """One config field, declared once.

  default: its value when a config does not set it (`Same(...)`: another
    field's). doc: one line. check: type and range. rerun: how a rerun may
    change it (RERUN_RULES). official: how it relates to the official
    google-research configs: '' ours, 'yes' as official, else what differs.
  """
  default: Any
  doc: str
  check: Optional[Check]
  rerun: str = REFUSED
  official: str = ''
  filled: ClassVar[bool] = True  # absent from a config: takes the default

  def __post_init__(self):
    assert self.rerun in RERUN_RULES, self.rerun

  def problem(self, value) -> Optional[str]:
    """What is wrong with `value` for this field, or None."""
    return self.check.problem(value)


ANY = object()  # a Refused field's default: no value is accepted


@dataclasses.dataclass(frozen=True)
class Refused(Field):
  """An official field this port does not implement. Absent, it stays
  absent; set to anything but its default (which means what the port does
  anyway; ANY: no value) it is refused, and `doc` says why."""
  filled: ClassVar[bool] = False

  def problem(self, value) -> Optional[str]:
    if self.default is not ANY and _same(value, self.default):
      return None
    return (f'is set to {value!r}, which this port does not implement: '
            f'{self.doc}')


def _same(value, neutral) -> bool:
  if isinstance(neutral, tuple):
    return isinstance(value, (tuple, list)) and tuple(value) == neutral
  return value == neutral


def refused(default, why: str) -> Refused:
  return Refused(default, why, None, FREE, 'refused')
