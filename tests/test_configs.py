"""The shipped configs: they load, validate, and keep the official values.

Nothing here compiles or runs a model: configs are loaded the way
`--config=configs/X.py` loads them and checked with `validate_config`.
"""

import os
import re

from absl import flags
import jax
from ml_collections import config_flags
import pytest

from diffusion_distillation import config as config_lib
from diffusion_distillation.models import diffusion_model as model_lib

from helpers import CONFIG_DIR
from helpers import config_path
from helpers import load_config
from helpers import REPO

# configs/common.py holds what the paper configs share; it is not a config.
CONFIG_NAMES = sorted(f[:-3] for f in os.listdir(CONFIG_DIR)
                      if f.endswith('.py') and not f.startswith('_')
                      and f != 'common.py')
PAPER_CONFIGS = ('cifar10', 'imagenet64', 'lsun_church128', 'lsun_bedroom128')
# The configs of the user's own data, and the field each needs set.
USER_DATA = {'image_folder': '--config.dataset.path=/data/images',
             'tfds': '--config.dataset.tfds_name=oxford_flowers102'}
NEEDS = {**USER_DATA, 'image_folder_cpu': '--config.dataset.path=/data/images',
         'diffusers_distill': ('--config.distillation.teacher_checkpoint_path='
                               '/models/ddpm-cifar10-32')}

# ml_collections loads config files with the deprecated `load_module()`.
pytestmark = pytest.mark.filterwarnings('ignore:the load_module')


def load_with_flags(name, *overrides):
  """The config as `main` sees it: locked, with command-line overrides."""
  return load_config(name, *overrides, lock=True)


def validate(config, device_count=1):
  config_lib.validate_config(config, device_count=device_count,
                             process_count=1)


def test_every_paper_dataset_has_a_base_and_a_distill_config():
  expected = {f'{d}_{kind}' for d in PAPER_CONFIGS for kind in ('base',
                                                                'distill')}
  assert expected <= set(CONFIG_NAMES)


@pytest.mark.parametrize('name', CONFIG_NAMES)
def test_config_loads_and_validates(name):
  config = load_config(name, *[NEEDS[name]] if name in NEEDS else [])
  validate(config)
  # The docstring opens with what the file is and gives its run command.
  with open(config_path(name)) as f:
    source = f.read()
  assert re.search(rf'--config=configs/{name}\.py', source)


@pytest.mark.parametrize('name', [n for n in CONFIG_NAMES
                                  if not n.startswith('digits')
                                  and n not in NEEDS])
def test_paper_configs_validate_on_their_hardware_and_need_no_extra_step(name):
  config = load_config(name)
  # The paper used 8 TPUv4 chips for CIFAR-10 and 64 for the other data sets.
  validate(config, device_count=8 if name.startswith('cifar10') else 64)
  assert config.eval.run_after_training is False  # hours of sampling
  assert config.eval.metric == 'inception'
  assert config.eval.num_samples == 50_000
  assert config.dataset.data_dir == ''
  assert config.model.dtype == 'float32'
  if name.endswith('_base'):
    assert 'distillation' not in config
    assert config.train.num_train_steps > 0
    assert config.eval.teacher_max_steps == config.model.eval_sampling_num_steps
  else:
    assert config.train.num_train_steps == 0
    # No guided teacher was released: a guided distill config reads the
    # workdir its base config's command writes.
    assert config.distillation.teacher_checkpoint_path.startswith(
        'workdirs/' if 'guided' in name else
        'gs://gresearch/diffusion-distillation/')
    assert config.eval.teacher_max_steps == config.distillation.start_num_steps


@pytest.mark.parametrize('dataset', PAPER_CONFIGS)
def test_distill_config_is_its_base_config_with_distillation(dataset):
  base = load_config(f'{dataset}_base').to_dict()
  distill = load_config(f'{dataset}_distill').to_dict()
  # The official students train without dropout.
  assert distill.pop('distillation')['dropout'] == 0.
  # Same teacher and data; only the teacher's sampler steps, the optimizer
  # and the checkpoint interval differ.
  for section, fields in (
      ('model', ('eval_sampling_num_steps',)),
      ('eval', ('teacher_max_steps',)),
      ('train', ('num_train_steps', 'learning_rate',
                 'learning_rate_warmup_steps', 'weight_decay', 'ema_decay',
                 'checkpoint_every_secs'))):
    for field in fields:
      del base[section][field], distill[section][field]
  assert distill == base


# Values from the official google-research/diffusion_distillation configs
# (cifar_*.py, imagenet64_*.py, church128_*.py, bedroom128_*.py).
OFFICIAL = {
    'cifar10_base': {
        'dataset.args.class_conditional': False,
        'model.args.ch': 256, 'model.args.emb_ch': 1024,
        'model.args.ch_mult': (1, 1, 1), 'model.args.num_res_blocks': 3,
        'model.args.attn_resolutions': (8, 16), 'model.args.num_heads': 1,
        'model.args.dropout': 0.2, 'model.args.resblock_resample': True,
        'model.mean_type': 'x', 'model.eval_sampling_num_steps': 1024,
        'train.batch_size': 128, 'train.learning_rate': 2e-4,
        'train.learning_rate_warmup_steps': 1000, 'train.weight_decay': 0.001,
        'train.ema_decay': 0.9999, 'train.grad_clip': 1.0,
        'train.substeps': 10, 'train.enable_update_skip': False,
    },
    'cifar10_distill': {
        'distillation.teacher_checkpoint_path':
            'gs://gresearch/diffusion-distillation/cifar_original',
        'distillation.start_num_steps': 8192,
        'distillation.end_num_steps': 1,
        'distillation.steps_per_iter': 50_000,
        'distillation.learning_rate': 5e-5,
        'distillation.learning_rate_anneal_type': 'linear',
        'distillation.weight_decay': 0., 'distillation.ema_decay': 0.,
        'distillation.dropout': 0., 'train.learning_rate_warmup_steps': 0,
        'train.batch_size': 128, 'model.mean_type': 'x',
    },
    'imagenet64_base': {
        'dataset.args.class_conditional': True,
        'model.args.ch': 192, 'model.args.emb_ch': 768,
        'model.args.ch_mult': (1, 2, 3, 4),
        'model.args.attn_resolutions': (8, 16, 32),
        'model.args.num_heads': None, 'model.args.head_dim': 64,
        'model.args.dropout': 0.1, 'model.mean_type': 'both',
        'train.batch_size': 2048, 'train.learning_rate': 3e-4,
        'train.weight_decay': 0., 'train.ema_decay': 0.9999,
    },
    'imagenet64_distill': {
        'dataset.args.class_conditional': True,
        'distillation.teacher_checkpoint_path':
            'gs://gresearch/diffusion-distillation/imagenet_original',
        'distillation.start_num_steps': 1024,
        'distillation.end_num_steps': 1,
        'distillation.steps_per_iter': 50_000,
        'distillation.learning_rate': 1e-4,
        'train.batch_size': 2048, 'train.checkpoint_every_secs': 1500,
    },
    'lsun_church128_distill': {
        'model.args.ch': 64, 'model.args.ch_mult': (1, 2, 4, 6, 8),
        'model.args.head_dim': 64, 'model.mean_type': 'both',
        'distillation.teacher_checkpoint_path':
            'gs://gresearch/diffusion-distillation/church_original',
        'distillation.start_num_steps': 1024,
        'distillation.learning_rate': 1e-4,
    },
    'lsun_bedroom128_distill': {
        'distillation.teacher_checkpoint_path':
            'gs://gresearch/diffusion-distillation/bedroom_original',
    },
}


# Values from the authors' google-research/ddpm_w_distillation configs
# (config/{i64,cifar}_retrain_unet3.py, *_condw_stage1_distill.py,
# *_condw_stage2_distill.py, *_condw_stage2_nvidia_distill.py).
_GUIDED_TEACHER = {
    'dataset.args.class_conditional': True, 'model.mean_type': 'v',
    'model.cond_drop_prob': 0.1, 'model.mean_loss_weight_type': 'snr',
    'model.logvar_type': 'fixed_medium:0.3', 'model.args.resblock_resample':
    True, 'model.args.logsnr_input_type': 'inv_cos',
    'train.learning_rate_warmup_steps': 10_000, 'train.ema_decay': 0.9999,
    'train.grad_clip': 1.0, 'train.substeps': 10,
    'eval.guidance': (0., 0.3, 1., 2., 4.)}
_STAGE_ONE = {
    'model.args.dropout': 0., 'model.mean_type': 'v',
    'model.mean_loss_weight_type': 'snr', 'guidance.w_min': 0.,
    'guidance.w_max': 4., 'guidance.w_input_type': 'inv_cos',
    'guidance.w_const': 0.3, 'guidance.w_warmup_steps': 10_000,
    'guidance.learning_rate_anneal_type': 'none', 'guidance.ema_decay':
    0.9999, 'distillation.start_num_steps': 1024,
    'distillation.end_num_steps': 1024}
_STAGE_TWO = {
    'model.args.dropout': 0., 'model.mean_type': 'v',
    'model.mean_loss_weight_type': 'snr_trunc', 'model.logvar_type':
    'fixed_large', 'guidance.num_updates': 0, 'guidance.w_warmup_steps': 0,
    'distillation.start_num_steps': 1024, 'distillation.end_num_steps': 1,
    'distillation.steps_per_iter': 50_000, 'distillation.learning_rate': 1e-4,
    'distillation.learning_rate_anneal_type': 'linear',
    'distillation.ema_decay': 0.}
AUTHORS = {
    'imagenet64_guided_base': dict(
        _GUIDED_TEACHER, **{
            'model.args.ch': 192, 'model.args.emb_ch': 768,
            'model.args.ch_mult': (1, 2, 3, 4), 'model.args.head_dim': 64,
            'model.args.attn_resolutions': (8, 16, 32),
            'model.args.dropout': 0.1, 'train.batch_size': 2048,
            'train.learning_rate': 3e-4, 'train.weight_decay': 0.,
            'model.eval_sampling_num_steps': 256}),
    'cifar10_guided_base': dict(
        _GUIDED_TEACHER, **{
            'model.args.ch': 256, 'model.args.emb_ch': 1024,
            'model.args.ch_mult': (1, 1, 1), 'model.args.num_heads': 1,
            'model.args.attn_resolutions': (8, 16),
            'model.args.dropout': 0.2, 'train.batch_size': 128,
            'train.learning_rate': 2e-4, 'train.weight_decay': 0.001,
            'model.eval_sampling_num_steps': 1024}),
    'imagenet64_guided_stage_one': dict(
        _STAGE_ONE, **{'train.batch_size': 256, 'guidance.learning_rate': 3e-4,
                       'distillation.teacher_checkpoint_path':
                           'workdirs/imagenet64_guided_base'}),
    'cifar10_guided_stage_one': dict(
        _STAGE_ONE, **{'train.batch_size': 128, 'guidance.learning_rate': 1e-4,
                       'distillation.teacher_checkpoint_path':
                           'workdirs/cifar10_guided_base'}),
    'imagenet64_guided_distill': dict(
        _STAGE_TWO, **{'train.batch_size': 256, 'distillation.target':
                       'progressive'}),
    'imagenet64_guided_nvidia': dict(
        _STAGE_TWO, **{'train.batch_size': 256, 'distillation.target':
                       'two_step'}),
    'cifar10_guided_distill': dict(
        _STAGE_TWO, **{'train.batch_size': 128, 'distillation.target':
                       'progressive'}),
    'cifar10_guided_nvidia': dict(
        _STAGE_TWO, **{'train.batch_size': 128, 'distillation.target':
                       'two_step'}),
}


@pytest.mark.parametrize('name', sorted(OFFICIAL) + sorted(AUTHORS))
def test_official_values(name):
  config = load_config(name)
  for field, value in {**OFFICIAL, **AUTHORS}[name].items():
    node = config
    for part in field.split('.'):
      node = node[part]
    assert node == value, field


@pytest.mark.parametrize('name', [n for n in CONFIG_NAMES
                                  if n.endswith('_distill')])
def test_distillation_learning_rate_follows_train_learning_rate(name):
  default = load_config(name)
  assert default.distillation.learning_rate == default.train.learning_rate
  config = load_with_flags(name, '--config.train.learning_rate=0.001')
  assert config.train.learning_rate == 0.001
  assert config.distillation.learning_rate == 0.001
  # An explicit override wins, in either order, and leaves train's alone.
  for overrides in (('--config.train.learning_rate=0.001',
                     '--config.distillation.learning_rate=3e-05'),
                    ('--config.distillation.learning_rate=3e-05',
                     '--config.train.learning_rate=0.001')):
    config = load_with_flags(name, *overrides)
    assert config.distillation.learning_rate == 3e-5
    assert config.train.learning_rate == 0.001


def test_configs_load_by_a_relative_path_from_another_directory(monkeypatch):
  """configs/common.py is found beside the config file, not via the cwd."""
  monkeypatch.chdir(os.path.dirname(REPO))
  relative = os.path.join(os.path.basename(REPO), 'configs',
                          'cifar10_distill.py')
  flag_values = flags.FlagValues()
  argv = ['main', f'--config={relative}']
  config_flags.DEFINE_config_file('config', None, flag_values=flag_values,
                                  sys_argv=argv)
  flag_values(argv)
  assert flag_values.config.to_dict() == load_config('cifar10_distill').to_dict()


def test_distill_steps_follow_start_num_steps():
  config = load_with_flags('cifar10_distill',
                           '--config.distillation.start_num_steps=1024')
  assert config.eval.teacher_max_steps == 1024
  assert config.model.eval_sampling_num_steps == 1024
  config = load_with_flags('cifar10_distill',
                           '--config.eval.teacher_max_steps=8')
  assert config.distillation.start_num_steps == 8192


def test_base_teacher_max_steps_follows_eval_sampling_num_steps():
  config = load_with_flags('cifar10_base',
                           '--config.model.eval_sampling_num_steps=256')
  assert config.eval.teacher_max_steps == 256


def test_digits_teacher_max_steps_follows_start_num_steps():
  config = load_with_flags('digits', '--config.distillation.start_num_steps=64')
  assert config.eval.teacher_max_steps == 64
  assert load_config('digits').eval.teacher_max_steps == 128


def test_digits_guided_is_digits_plus_guidance():
  """Labels, label dropout, the guidance section, the guided evaluation."""
  config, plain = (load_config('digits_guided').to_dict(),
                   load_config('digits').to_dict())
  assert config['model'].pop('cond_drop_prob') == 0.1  # the paper's p_uncond
  assert plain['model'].pop('cond_drop_prob') == 0.
  guidance = config.pop('guidance')
  assert (guidance['w_min'], guidance['w_max'], guidance['w_const'],
          guidance['w_input_type']) == (0., 4., 0.3, 'inv_cos')
  assert config['eval'].pop('guidance') and not plain['eval'].pop('guidance')
  for field in ('student_samplers', 'samplers', 'teacher_steps'):
    config['eval'].pop(field, None), plain['eval'].pop(field, None)
  config['dataset']['args']['class_conditional'] = False
  assert config == plain


def test_imagenet64_network_builds_with_heads_of_64_channels():
  """Traces (does not compile) the init of the official ImageNet 64 UNet."""
  model = model_lib.DiffusionModel.from_config(
      load_config('imagenet64_distill'), (64, 64, 3), num_classes=1000)
  params = jax.eval_shape(model.init_params, jax.random.PRNGKey(0))
  assert params['class_emb']['kernel'].shape == (1000, 768)
  assert params['conv_out']['kernel'].shape[-1] == 6  # 'both': x and eps
  # 768 channels at 8x8 in heads of 64 channels: 12 heads.
  assert params['mid.attn_1']['q']['kernel'].shape == (768, 12, 64)


@pytest.mark.parametrize('field,value,named', [
    ('distillation.start_num_steps', 6, 'distillation.start_num_steps'),
    ('distillation.start_num_steps', 1, 'distillation.start_num_steps'),
    ('model.mean_type', 'z', 'model.mean_type'),
    ('dataset.name', 'mnist', 'dataset.name'),
    ('model.logvar_type', 'fixed_huge', 'model.logvar_type'),
    ('model.args.dropout', 1.0, 'model.args.dropout'),
    ('distillation.dropout', -0.1, 'distillation.dropout'),
    ('model.mean_loss_weight_type', 'snr_max', 'model.mean_loss_weight_type'),
    ('train.substeps', 0, 'train.substeps'),
    ('eval.samplers', ('ddim', 'euler'), 'eval.samplers'),
])
def test_validation_names_the_field(field, value, named):
  config = load_config('digits')
  *parents, leaf = field.split('.')
  node = config
  for part in parents:
    node = node[part]
  node[leaf] = value
  with pytest.raises(config_lib.ConfigError, match=re.escape(named)):
    validate(config)


def test_validation_rejects_a_batch_the_devices_cannot_split():
  config = load_config('digits')
  assert config.train.batch_size % 3
  with pytest.raises(config_lib.ConfigError, match='train.batch_size'):
    validate(config, device_count=3)


def test_validation_rejects_distillation_without_a_teacher():
  config = load_config('cifar10_distill')
  config.distillation.teacher_checkpoint_path = ''
  with pytest.raises(config_lib.ConfigError,
                     match='distillation.teacher_checkpoint_path'):
    validate(config)
  config = load_config('cifar10_base')
  config.train.num_train_steps = 0
  with pytest.raises(config_lib.ConfigError,
                     match='train.num_train_steps'):
    validate(config)


@pytest.mark.parametrize('name', sorted(USER_DATA))
def test_user_data_configs_need_their_data_and_shape_the_unet_by_size(name):
  with pytest.raises(config_lib.ConfigError) as e:
    validate(load_config(name))
  assert USER_DATA[name].split('=')[0][len('--config.'):] in str(e.value)
  for size, levels in ((32, (1, 1, 1)), (64, (1, 2, 3, 4)),
                       (128, (1, 2, 4, 6, 8)), (256, (1, 1, 2, 4, 6, 8))):
    config = load_config(name, USER_DATA[name],
                         f'--config.dataset.image_size={size}')
    validate(config)
    model = model_lib.DiffusionModel.from_config(config, (size, size, 3), 1)
    assert model.network.ch_mult == levels
  config = load_config(name, USER_DATA[name], '--config.dataset.image_size=100')
  with pytest.raises(config_lib.ConfigError, match='divisible by 16'):
    validate(config)
  config = load_config(name, USER_DATA[name], '--config.model.args.ch_mult=1,2',
                       '--config.model.args.attn_resolutions=16,')
  model = model_lib.DiffusionModel.from_config(config, (64, 64, 3), 1)
  assert model.network.ch_mult == (1, 2)
  assert model.network.attn_resolutions == (16,)
