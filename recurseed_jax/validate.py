"""Config validation before any compute: every error names the config key and what to do."""

from recurseed_jax import crf
from recurseed_jax import infer
from recurseed_jax import multistage
from recurseed_jax.method.mix import MIX_KINDS
from recurseed_jax.models import resnet
from recurseed_jax.models import weights

REFINE_KINDS = ('scg', 'pamr', 'none')
CAM_LOSS_KINDS = ('l1', 'mse')
PARALLEL_MODES = ('jit', 'pmap')
DTYPES = ('float32', 'bfloat16')
DATASETS = dict(synthetic=None, voc12=20, coco14=80)  # name -> number of classes
DATA_SOURCES = ('files', 'tfds')


def _unit(config, key):
  node = config
  for part in key.split('.'):
    node = node[part]
  if not 0.0 <= float(node) <= 1.0:
    raise ValueError(f'config.{key}={node} must lie in [0, 1]')


def _choice(value, key, allowed):
  if value not in allowed:
    raise ValueError(f'config.{key}={value!r} is not one of: {", ".join(allowed)}')


def validate(config, _variant=False):
  """Raises ValueError naming the first bad key (of the run, its segmenter, its ablation)."""
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
  weights.parse_init(config.model.init)  # raises naming model.init and its accepted forms
  _choice(config.model.get('dilation_scheme', 'uniform'), 'model.dilation_scheme',
          resnet.DILATION_SCHEMES)
  _choice(config.model.get('segmenter_head', 'v3plus'), 'model.segmenter_head', ('v3plus', 'v2'))
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
  if config.train.steps < 0 or config.train.batch_size <= 0:
    raise ValueError('config.train.steps must be >= 0 and config.train.batch_size positive')
  if config.train.steps == 0 and str(config.model.init) == 'scratch':
    raise ValueError('config.train.steps=0 means "no training, infer from config.model.init", '
                     'but config.model.init is scratch: set it to rsepm:<path> (or train)')
  if not config.infer.scales:
    raise ValueError('config.infer.scales is empty')
  _validate_training(config)
  _validate_data(config.data)
  _validate_inference(config)
  _validate_mix_edges(config.mix)
  _choice(config.model.get('network', 'recurseed'), 'model.network', ('recurseed',))
  if 'seg' in config:
    _validate_segmenter(config)
  if 'ablation' in config and not _variant:
    from recurseed_jax import ablation  # pylint: disable=g-import-not-at-top
    for name, _, variant in ablation.variant_configs(config):
      try:
        validate(variant, _variant=True)
      except ValueError as e:
        raise ValueError(f'ablation variant {name!r}: {e}') from e


def _validate_mix_edges(mix):
  """EdgePredictMix's fields (older configs lack them: their defaults apply)."""
  if not 0.0 <= float(mix.get('edge_threshold', 0.3)) <= 1.0:
    raise ValueError(f'config.mix.edge_threshold={mix.edge_threshold} must lie in [0, 1]')
  band = mix.get('edge_band', 2)
  if not isinstance(band, int) or band < 0:
    raise ValueError(f'config.mix.edge_band={band!r} must be an integer >= 0 (pixels)')
  distance = mix.get('edge_distance', 0)
  if not isinstance(distance, int) or distance < 0:
    raise ValueError(f'config.mix.edge_distance={distance!r} must be an integer >= 0 (pixels; '
                     '0 = rs.refine_stride)')


def _validate_segmenter(config):
  """config.seg: its overrides name real fields, and the configs they make are sound."""
  seg = multistage.seg_config(config)  # raises naming config.seg.<section>.<key>
  pred = multistage.predict_config(config)
  try:
    weights.parse_init(seg.model.init)
  except ValueError as e:
    raise ValueError(f'config.seg.init: {e}') from e
  _choice(seg.model.segmenter_head, 'seg.model.segmenter_head', ('v3plus', 'v2'))
  if not 0.0 <= seg.infer.class_threshold <= 1.0:
    raise ValueError(f'config.seg.infer.class_threshold={seg.infer.class_threshold} must lie in '
                     '[0, 1]')
  for key, stride in (('seg.model.output_stride', seg.model.output_stride),
                      ('seg.predict_model.output_stride', pred.model.output_stride)):
    if stride not in (8, 16, 32):
      raise ValueError(f'config.{key}={stride} must be 8, 16 or 32')
  if seg.data.crop_size % seg.model.output_stride:
    raise ValueError(f'the segmenter\'s crop {seg.data.crop_size} (config.seg.data.crop_size or '
                     'config.data.crop_size) must be a multiple of its output stride '
                     f'{seg.model.output_stride}')
  if seg.train.steps < 0 or seg.train.batch_size <= 0:
    raise ValueError('config.seg.train.steps must be >= 0 and config.seg.train.batch_size positive')
  _choice(seg.infer.interpolation, 'seg.infer.interpolation', infer.INTERPOLATIONS)
  if config.seg.max_classes <= 0:
    raise ValueError(f'config.seg.max_classes={config.seg.max_classes} must be positive')


def _validate_training(config):
  """The parallel / precision / EMA / guard / checkpoint fields (README, multi-device)."""
  t = config.train
  _choice(config.parallel.mode, 'parallel.mode', PARALLEL_MODES)
  _choice(t.dtype, 'train.dtype', DTYPES)
  if not 0.0 <= t.ema_decay < 1.0:
    raise ValueError(f'config.train.ema_decay={t.ema_decay} must lie in [0, 1) (0 = no EMA)')
  if config.rs.seed_from_ema and t.ema_decay <= 0:
    raise ValueError('config.rs.seed_from_ema needs an EMA: set config.train.ema_decay > 0 '
                     '(e.g. 0.999)')
  for key in ('max_nonfinite', 'log_every', 'checkpoint_every', 'keep_checkpoints'):
    if int(t[key]) < 1:
      raise ValueError(f'config.train.{key}={t[key]} must be at least 1')


def _range(d, key, integer=False):
  """A (lo, hi) field with 0 < lo <= hi, or None."""
  value = d.get(key)
  if value is None:
    return None
  ok = len(value) == 2 and all(isinstance(v, (int, float)) and v > 0 for v in value)
  if not ok or value[0] > value[1] or (integer and any(int(v) != v for v in value)):
    kind = 'integers' if integer else 'numbers'
    raise ValueError(f'config.data.{key}={tuple(value)} must be (lo, hi), positive {kind}, '
                     'lo <= hi')
  return value


def _validate_data(d):
  """The data section: dataset, source, root, augmentation ranges (README, datasets)."""
  _choice(d.name, 'data.name', tuple(DATASETS))
  _choice(d.get('source', 'files'), 'data.source', DATA_SOURCES)
  classes = DATASETS[d.name]
  if classes is not None:
    if not d.get('root'):
      raise ValueError(f'config.data.root is empty: set it to the folder holding the {d.name} '
                       'dataset (either layout of README, "Datasets")')
    if d.get('num_classes', classes) != classes:
      raise ValueError(f'config.data.num_classes={d.num_classes} but {d.name} has {classes} '
                       'classes')
  scale, long_side = _range(d, 'scale_range'), _range(d, 'long_side', integer=True)
  if scale is not None and long_side is not None:
    raise ValueError('config.data.scale_range and config.data.long_side are both set; set one '
                     '(the other None)')
  if d.crop_size <= 0:
    raise ValueError(f'config.data.crop_size={d.crop_size} must be positive')
  jitter = tuple(d.color_jitter)
  if len(jitter) != 4 or min(jitter) < 0 or jitter[3] > 0.5:
    raise ValueError(f'config.data.color_jitter={jitter} must be (brightness, contrast, '
                     'saturation, hue), each >= 0, hue <= 0.5')
  for key in ('workers', 'threads'):
    if int(d.get(key, 0)) < 0:
      raise ValueError(f'config.data.{key}={d[key]} must be >= 0 (0: all cores)')


def _validate_inference(config):
  """Buckets, CRF pool and export fields (README, "Seeds, CRF, evaluation and export at scale")."""
  buckets = tuple(tuple(b) for b in config.infer.get('buckets', ()))
  for b in buckets:
    if len(b) != 2 or not all(isinstance(v, int) and v > 0 for v in b):
      raise ValueError(f'config.infer.buckets has {b!r}; each bucket is (height, width), '
                       'positive integers')
  crop = config.data.crop_size
  if buckets and not any(h >= crop and w >= crop for h, w in buckets):
    # Images are at least crop-sized for the network at training; buckets that cannot hold one
    # are a typo, which would otherwise surface after training, at the first larger image.
    raise ValueError(f'config.data.crop_size={crop} is larger than every bucket of '
                     f'config.infer.buckets={buckets}; add a bucket of at least ({crop}, {crop})')
  for key in ('infer.prefetch', 'infer.io_threads', 'crf.queue_size'):
    section, name = key.split('.')
    if int(config[section].get(name, 1)) < 1:
      raise ValueError(f'config.{key}={config[section][name]} must be at least 1')
  if int(config.crf.workers) < 0:
    raise ValueError(f'config.crf.workers={config.crf.workers} must be >= 0 (0 runs inline)')
  if int(config.export.num_overlays) < 0:
    raise ValueError(f'config.export.num_overlays={config.export.num_overlays} must be >= 0')
  _choice(config.export.get('mask_format', 'palette'), 'export.mask_format', ('palette', 'gray'))
  _choice(config.infer.interpolation, 'infer.interpolation', infer.INTERPOLATIONS)
  _choice(config.infer.seed_dtype, 'infer.seed_dtype', infer.SEED_DTYPES)
  _choice(config.crf.image, 'crf.image', crf.IMAGE_MODES)
