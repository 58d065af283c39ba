"""Config validation before any compute: every error names the config key and what to do."""

MIX_KINDS = ('certainmix', 'classmix', 'none')
REFINE_KINDS = ('scg', 'pamr', 'none')
CAM_LOSS_KINDS = ('l1', 'mse')


def _unit(config, key):
  node = config
  for part in key.split('.'):
    node = node[part]
  if not 0.0 <= float(node) <= 1.0:
    raise ValueError(f'config.{key}={node} must lie in [0, 1]')


def _choice(value, key, allowed):
  if value not in allowed:
    raise ValueError(f'config.{key}={value!r} is not one of: {", ".join(allowed)}')


def validate(config):
  """Raises ValueError naming the first bad key."""
  for key in ('rs.certain', 'rs.uncertain', 'rs.seed_mix', 'rs.scg.first_th', 'rs.scg.second_th',
              'rs.scg.fg_th', 'rs.scg.bg_th', 'mix.class_prob', 'mix.min_area',
              'infer.class_threshold'):
    _unit(config, key)
  if config.rs.uncertain >= config.rs.certain:
    raise ValueError(f'config.rs.uncertain={config.rs.uncertain} must be below '
                     f'config.rs.certain={config.rs.certain}')
  _choice(config.mix.kind, 'mix.kind', MIX_KINDS)
  _choice(config.rs.refine, 'rs.refine', REFINE_KINDS)
  _choice(config.loss.cam_kind, 'loss.cam_kind', CAM_LOSS_KINDS)
  for lvl in config.rs.scg.levels:
    if lvl not in (2, 3, 4, 5):
      raise ValueError(f'config.rs.scg.levels has {lvl}; backbone stages are 2, 3, 4, 5')
  if config.model.output_stride not in (8, 16, 32):
    raise ValueError(f'config.model.output_stride={config.model.output_stride} must be 8, 16 or 32')
  if config.rs.refine_stride <= 0:
    raise ValueError(f'config.rs.refine_stride={config.rs.refine_stride} must be positive')
  if config.rs.refine == 'scg' and not config.rs.scg.levels:
    raise ValueError("config.rs.scg.levels is empty; rs.refine='scg' needs some of 2, 3, 4, 5")
  if config.infer.batch_size <= 0:
    raise ValueError(f'config.infer.batch_size={config.infer.batch_size} must be positive')
  if any(float(s) <= 0 for s in config.infer.scales):
    raise ValueError(f'config.infer.scales={tuple(config.infer.scales)} must all be positive')
  crop = config.data.crop_size
  for key, stride in (('rs.refine_stride', config.rs.refine_stride),
                      ('model.output_stride', config.model.output_stride)):
    if crop % stride:
      raise ValueError(f'config.data.crop_size={crop} must be a multiple of config.{key}={stride}')
  if config.train.steps <= 0 or config.train.batch_size <= 0:
    raise ValueError('config.train.steps and config.train.batch_size must be positive')
  if not config.infer.scales:
    raise ValueError('config.infer.scales is empty')
