"""The config schema: every field declared once, and what reads it.

* `fields.py`: the declarations (default, check, doc, rerun rule).
* `schema.py`: what a declaration is.
* `defaults.py`: `default_config()`, optional sections, `complete(config)`.
* `validation.py`: `validate_config`, once, before anything runs.
* `rerun.py`: what a rerun on an existing workdir may change.
* `table.py`: the Markdown table of every field (docs/config_fields.md).
"""

from diffusion_distillation.config.defaults import add_section
from diffusion_distillation.config.defaults import complete
from diffusion_distillation.config.defaults import default_config
from diffusion_distillation.config.defaults import flat_fields
from diffusion_distillation.config.fields import FIELDS
from diffusion_distillation.config.fields import METRIC_VALUES
from diffusion_distillation.config.fields import METRICS
from diffusion_distillation.config.fields import OPTIMIZERS
from diffusion_distillation.config.fields import PATH_FIELDS
from diffusion_distillation.config.rerun import check_rerun
from diffusion_distillation.config.rerun import json_fields
from diffusion_distillation.config.rerun import read_saved_config
from diffusion_distillation.config.rerun import Rerun
from diffusion_distillation.config.schema import ConfigError
from diffusion_distillation.config.validation import validate_config
from diffusion_distillation.config.validation import validate_model

__all__ = [
    'ConfigError', 'FIELDS', 'METRIC_VALUES', 'METRICS', 'OPTIMIZERS',
    'PATH_FIELDS', 'Rerun',
    'add_section',
    'check_rerun', 'complete', 'default_config', 'flat_fields',
    'json_fields',
    'read_saved_config', 'validate_config', 'validate_model',
]
