"""The config layer: defaults, overrides, derived configs and validation, in one place.

Every config enters through `load` (launch.py does it): it is completed once from
configs/default.py, the one place defaults live (a config written before a field existed, or a
hand-made one, gets the default), so code reads `config.section.field` and never repeats a
default with `.get`. Configs derived from a run's (the multi-stage segmenter's, the predict
stage's, each ablation variant's) are copies with some fields overridden, and an override may
only name a field that exists. `validate` checks every field before any compute; the allowed
values come from the modules that own them. Errors are `ConfigError`s whose message names the key.
"""

import difflib

import ml_collections

from configs import default as default_config
from data_pipeline import registry
from recurseed_jax import crf
from recurseed_jax import export
from recurseed_jax import infer
from recurseed_jax import models
from recurseed_jax import parallel
from recurseed_jax.method import losses
from recurseed_jax.method import mix
from recurseed_jax.method import refine
from recurseed_jax.models import resnet
from recurseed_jax.models import weights

SEGMENTER_SECTIONS = ('data', 'model', 'optim', 'train', 'infer')
SEGMENTER_SUBFOLDER = 'segmenter'  # <workdir>/segmenter: its checkpoints and metrics
BOUNDARY_SECTIONS = ('data', 'model', 'optim', 'train')
BOUNDARY_SUBFOLDER = 'boundary'  # <workdir>/boundary: the boundary network's checkpoints
BOUNDARY_INITS = ('recurseed', 'scratch', 'imagenet:<path>', 'affinity:<path>')
PSEUDO_METHODS = ('crf', 'random_walk', 'random_walk+crf')


class ConfigError(ValueError):
  """A config field that does not exist or holds a bad value; the message names the key."""


# --- defaults and completion -------------------------------------------------------------------
def defaults():
  """configs/default.py's config: every field, with its documented default."""
  return default_config.get_config()


def complete(config, reference=None, where='config'):
  """`config` with every field of `reference` (default: `defaults()`) it lacks added, in place.

  Sections recurse; a field the config has keeps its value (and a section the defaults lack,
  such as `ablation`, stays). Returns the config.
  """
  reference = defaults() if reference is None else reference
  with config.unlocked():
    for key, value in reference.items():
      if key not in config:
        config[key] = value
      elif isinstance(value, ml_collections.ConfigDict) and isinstance(
          config[key], ml_collections.ConfigDict):
        complete(config[key], value, f'{where}.{key}')
  return config


def load(config):
  """The one entry of a config: completed from the defaults, then validated."""
  validate(complete(config))
  return config


# --- overrides ---------------------------------------------------------------------------------
def _nearest(name, options):
  match = difflib.get_close_matches(name, list(options), n=1, cutoff=0.6)
  return f'; did you mean {match[0]!r}?' if match else ''


def override(config, fields, where):
  """Sets `fields` (a nested mapping, e.g. {'mix': {'kind': 'none'}}) into `config` in place.

  Every key must already exist in `config` (a typo is an error naming `where` and the key, not a
  silently new field); a mapping over a section recurses into it.
  """
  for key, value in fields.items():
    if key not in config:
      raise ConfigError(f'{where}.{key}: the config has no field {key!r} to override'
                        f'{_nearest(key, config.keys())}')
    if hasattr(value, 'items') and hasattr(config[key], 'items'):
      override(config[key], value, f'{where}.{key}')
    else:
      config[key] = value


def derive(config, fields, where):
  """A resolved, unlocked copy of `config` with `fields` overridden (see `override`)."""
  c = config.copy_and_resolve_references()
  with c.unlocked():
    override(c, fields, where)
  return c


def check_flag_keys(config, dotted_keys, prefix='--config.'):
  """Raises ConfigError naming the first `--config.<key>` of the command line with no field.

  `dotted_keys`: e.g. ['train.steps', 'train.stpes']. The message is one line with the nearest
  existing field, e.g. "--config.train.stpes: config.train has no field 'stpes'; did you mean
  'steps'?".
  """
  for dotted in dotted_keys:
    node, path = config, 'config'
    for part in dotted.split('.'):
      if not isinstance(node, ml_collections.ConfigDict) or part not in node:
        options = node.keys() if isinstance(node, ml_collections.ConfigDict) else ()
        what = f'{path} has no field {part!r}' if options else f'{path} is not a section'
        raise ConfigError(f'{prefix}{dotted}: {what}{_nearest(part, options)}')
      node, path = node[part], f'{path}.{part}'


# --- derived configs ---------------------------------------------------------------------------
def segmenter_config(config):
  """The run's config with config.seg's fields in place: what train_seg trains with.

  `config.seg` holds, per section (SEGMENTER_SECTIONS), only the fields that differ for the
  multi-stage segmenter; every other field keeps the run's value and meaning.
  """
  sections = {name: config.seg[name] for name in SEGMENTER_SECTIONS}
  c = derive(config, sections, 'config.seg')
  with c.unlocked():
    c.model.network = 'deeplab'
    c.model.init = config.seg.init
    # The segmenter is one run: no baseline or upper-bound twins.
    c.train.cam_baseline = False
    c.train.upper_bound = False
    c.rs.seed_from_ema = False  # the segmenter predicts with its own final params
  return c


def predict_config(config):
  """segmenter_config with config.seg.predict_model in place: what the predict stage infers with
  (output stride 8 and the doubled ASPP rates, as DeepLab evaluates)."""
  return derive(segmenter_config(config), {'model': config.seg.predict_model},
                'config.seg.predict_model')


def boundary_config(config):
  """The run's config with config.boundary's fields in place: what train_boundary trains with.

  The network is a BoundaryNet on the run's backbone layout (config.model's stage sizes and
  width) at the authors' dilations; config.boundary.init picks its backbone weights ('recurseed':
  the trained RecurSeed network's, which the train_boundary stage copies in).
  """
  sections = {name: config.boundary[name] for name in BOUNDARY_SECTIONS}
  c = derive(config, sections, 'config.boundary')
  init = str(config.boundary.init)
  with c.unlocked():
    c.model.network = 'boundary'
    c.model.dilation_scheme = 'authors'  # the authors' AffinityNet: last_stride 1, no dilation
    c.model.init = 'scratch' if init == 'recurseed' else init
    c.train.cam_baseline = False
    c.train.upper_bound = False
    c.rs.seed_from_ema = False
  return c


def ablation_variants(config):
  """[(name, title, config)] of config.ablation.variants, in config.ablation.order, then the rest.

  Each variant is the run's config with its `overrides` (a nested mapping) in place.
  """
  variants = config.ablation.variants
  order = list(config.ablation.order) if 'order' in config.ablation else []
  unknown = [n for n in order if n not in variants]
  if unknown:
    raise ConfigError(f'config.ablation.order names {unknown[0]!r}, which is not a variant; '
                      f'variants: {", ".join(variants)}')
  out = []
  for name in order + sorted(n for n in variants if n not in order):
    spec = variants[name]
    fields = spec.overrides if 'overrides' in spec else {}
    out.append((name, spec.title, derive(config, fields, f'config.ablation.variants.{name}')))
  return out


# --- validation --------------------------------------------------------------------------------
def _value(config, key):
  node = config
  for part in key.split('.'):
    node = node[part]
  return node


def _unit(config, key):
  value = _value(config, key)
  if not 0.0 <= float(value) <= 1.0:
    raise ConfigError(f'config.{key}={value} must lie in [0, 1]')


def _choice(value, key, allowed):
  if value not in allowed:
    raise ConfigError(f'config.{key}={value!r} is not one of: {", ".join(map(str, allowed))}')


def _at_least(config, key, low, note=''):
  value = _value(config, key)
  if int(value) < low:
    raise ConfigError(f'config.{key}={value} must be at least {low}{note}')


def validate(config, _variant=False):
  """Raises ConfigError naming the first bad key (of the run, its segmenter, its ablation)."""
  _validate_method(config)
  if not isinstance(config.compilation_cache, str):
    raise ConfigError(f"config.compilation_cache={config.compilation_cache!r} must be a folder, '' "
                      "(the per-user cache) or 'off'")
  _validate_model(config.model, 'model')
  _validate_training(config)
  _validate_data(config.data)
  _validate_inference(config)
  if config.model.network != 'recurseed':
    raise ConfigError(f"config.model.network={config.model.network!r}: the run's network is "
                      "'recurseed' (the segmenter's is set through config.seg)")
  if 'seg' in config:
    _validate_segmenter(config)
  _validate_random_walk(config)
  if 'ablation' in config and not _variant:
    for name, _, variant in ablation_variants(config):
      try:
        validate(variant, _variant=True)
      except ConfigError as e:
        raise ConfigError(f'ablation variant {name!r}: {e}') from e


def _validate_method(config):
  """RecurSeed, SCG, CertainMix and the losses (METHOD.md sections 2 and 3)."""
  for key in ('rs.certain', 'rs.uncertain', 'rs.seed_mix', 'rs.scg.first_th', 'rs.scg.second_th',
              'rs.scg.fg_th', 'rs.scg.bg_th', 'mix.class_prob', 'mix.min_area',
              'mix.edge_threshold', 'infer.class_threshold'):
    _unit(config, key)
  if config.rs.uncertain >= config.rs.certain:
    raise ConfigError(f'config.rs.uncertain={config.rs.uncertain} must be below '
                      f'config.rs.certain={config.rs.certain}')
  _choice(config.mix.kind, 'mix.kind', mix.MIX_KINDS)
  _choice(config.rs.refine, 'rs.refine', refine.REFINE_KINDS)
  _choice(config.loss.cam_kind, 'loss.cam_kind', losses.CAM_LOSS_KINDS)
  for lvl in config.rs.scg.levels:
    if lvl not in (2, 3, 4, 5):
      raise ConfigError(f'config.rs.scg.levels has {lvl}; backbone stages are 2, 3, 4, 5')
  if config.rs.refine == 'scg' and not config.rs.scg.levels:
    raise ConfigError("config.rs.scg.levels is empty; rs.refine='scg' needs some of 2, 3, 4, 5")
  if int(config.rs.scg.iteration) < 0:
    raise ConfigError(f'config.rs.scg.iteration={config.rs.scg.iteration} must be >= 0')
  if config.rs.refine_stride <= 0:
    raise ConfigError(f'config.rs.refine_stride={config.rs.refine_stride} must be positive')
  for key in ('edge_band', 'edge_distance'):
    value = config.mix[key]
    if not isinstance(value, int) or value < 0:
      extra = ' (pixels; 0 = rs.refine_stride)' if key == 'edge_distance' else ' (pixels)'
      raise ConfigError(f'config.mix.{key}={value!r} must be an integer >= 0{extra}')


def _validate_model(m, where):
  weights.parse_init(m.init)  # raises naming model.init and its accepted forms
  _choice(m.dilation_scheme, f'{where}.dilation_scheme', resnet.DILATION_SCHEMES)
  _choice(m.segmenter_head, f'{where}.segmenter_head', models.SEGMENTER_HEADS)
  if m.output_stride not in (8, 16, 32):
    raise ConfigError(f'config.{where}.output_stride={m.output_stride} must be 8, 16 or 32')


def _validate_training(config):
  """The step count, batch, parallel / precision / EMA / guard / checkpoint fields."""
  t = config.train
  crop = config.data.crop_size
  for key, stride in (('rs.refine_stride', config.rs.refine_stride),
                      ('model.output_stride', config.model.output_stride)):
    if crop % stride:
      raise ConfigError(f'config.data.crop_size={crop} must be a multiple of config.{key}='
                        f'{stride}')
  if t.steps < 0 or t.batch_size <= 0:
    raise ConfigError('config.train.steps must be >= 0 and config.train.batch_size positive')
  if t.steps == 0 and str(config.model.init) == 'scratch':
    raise ConfigError('config.train.steps=0 means "no training, infer from config.model.init", '
                      'but config.model.init is scratch: set it to rsepm:<path> (or train)')
  _choice(config.parallel.mode, 'parallel.mode', parallel.MODES)
  for key in ('peer_timeout_s', 'barrier_timeout_s', 'heartbeat_timeout_s'):
    if not config.parallel[key] > 0:
      raise ConfigError(f'config.parallel.{key}={config.parallel[key]} must be positive (seconds)')
  _choice(t.dtype, 'train.dtype', tuple(models.COMPUTE_DTYPES))
  if not 0.0 <= t.ema_decay < 1.0:
    raise ConfigError(f'config.train.ema_decay={t.ema_decay} must lie in [0, 1) (0 = no EMA)')
  if config.rs.seed_from_ema and t.ema_decay <= 0:
    raise ConfigError('config.rs.seed_from_ema needs an EMA: set config.train.ema_decay > 0 '
                      '(e.g. 0.999)')
  for key in ('max_nonfinite', 'log_every', 'checkpoint_every', 'keep_checkpoints'):
    _at_least(config, f'train.{key}', 1)


def _range(d, key, integer=False):
  """A (lo, hi) field with 0 < lo <= hi, or None."""
  value = d[key]
  if value is None:
    return None
  ok = len(value) == 2 and all(isinstance(v, (int, float)) and v > 0 for v in value)
  if not ok or value[0] > value[1] or (integer and any(int(v) != v for v in value)):
    kind = 'integers' if integer else 'numbers'
    raise ConfigError(f'config.data.{key}={tuple(value)} must be (lo, hi), positive {kind}, '
                      'lo <= hi')
  return value


def _validate_data(d):
  """The data section: dataset, source, root, augmentation ranges (docs/datasets.md)."""
  _choice(d.name, 'data.name', tuple(registry.DATASETS))
  _choice(d.source, 'data.source', registry.SOURCES)
  classes = registry.DATASETS[d.name]
  if classes is not None:
    if not d.root:
      raise ConfigError(f'config.data.root is empty: set it to the folder holding the {d.name} '
                        'dataset (either layout of docs/datasets.md)')
    if d.num_classes != classes:
      raise ConfigError(f'config.data.num_classes={d.num_classes} but {d.name} has {classes} '
                        'classes')
  scale, long_side = _range(d, 'scale_range'), _range(d, 'long_side', integer=True)
  if scale is not None and long_side is not None:
    raise ConfigError('config.data.scale_range and config.data.long_side are both set; set one '
                      '(the other None)')
  if d.crop_size <= 0:
    raise ConfigError(f'config.data.crop_size={d.crop_size} must be positive')
  jitter = tuple(d.color_jitter)
  if len(jitter) != 4 or min(jitter) < 0 or jitter[3] > 0.5:
    raise ConfigError(f'config.data.color_jitter={jitter} must be (brightness, contrast, '
                      'saturation, hue), each >= 0, hue <= 0.5')
  for key in ('workers', 'threads'):
    if int(d[key]) < 0:
      raise ConfigError(f'config.data.{key}={d[key]} must be >= 0 (0: all cores)')


def _validate_inference(config):
  """Scales, buckets, seeds, CRF pool and export fields (docs/inference.md)."""
  i = config.infer
  if not i.scales:
    raise ConfigError('config.infer.scales is empty')
  if any(float(s) <= 0 for s in i.scales):
    raise ConfigError(f'config.infer.scales={tuple(i.scales)} must all be positive')
  if i.batch_size <= 0:
    raise ConfigError(f'config.infer.batch_size={i.batch_size} must be positive')
  buckets = tuple(tuple(b) for b in i.buckets)
  for b in buckets:
    if len(b) != 2 or not all(isinstance(v, int) and v > 0 for v in b):
      raise ConfigError(f'config.infer.buckets has {b!r}; each bucket is (height, width), '
                        'positive integers')
  crop = config.data.crop_size
  if buckets and not any(h >= crop and w >= crop for h, w in buckets):
    # Images are at least crop-sized for the network at training; buckets that cannot hold one
    # are a typo, which would otherwise surface after training, at the first larger image.
    raise ConfigError(f'config.data.crop_size={crop} is larger than every bucket of '
                      f'config.infer.buckets={buckets}; add a bucket of at least ({crop}, {crop})')
  for key in ('infer.prefetch', 'infer.io_threads', 'infer.streams', 'crf.queue_size'):
    _at_least(config, key, 1)
  _at_least(config, 'crf.workers', 0, ' (0 runs inline)')
  for key in ('export.num_overlays', 'export.report_per_group', 'export.report_fixed'):
    _at_least(config, key, 0)
  _choice(config.export.mask_format, 'export.mask_format', export.MASK_FORMATS)
  _choice(i.interpolation, 'infer.interpolation', infer.INTERPOLATIONS)
  _choice(i.seed_dtype, 'infer.seed_dtype', infer.SEED_DTYPES)
  _choice(i.dtype, 'infer.dtype', tuple(models.COMPUTE_DTYPES))
  _choice(config.crf.image, 'crf.image', crf.IMAGE_MODES)


def _validate_segmenter(config):
  """config.seg: its overrides name real fields, and the configs they make are sound."""
  seg = segmenter_config(config)  # raises naming config.seg.<section>.<key>
  pred = predict_config(config)
  try:
    weights.parse_init(seg.model.init)
  except ValueError as e:
    raise ConfigError(f'config.seg.init: {e}') from e
  _choice(seg.model.segmenter_head, 'seg.model.segmenter_head', models.SEGMENTER_HEADS)
  if not 0.0 <= seg.infer.class_threshold <= 1.0:
    raise ConfigError(f'config.seg.infer.class_threshold={seg.infer.class_threshold} must lie in '
                      '[0, 1]')
  _choice(seg.infer.interpolation, 'seg.infer.interpolation', infer.INTERPOLATIONS)
  _choice(seg.infer.dtype, 'seg.infer.dtype', tuple(models.COMPUTE_DTYPES))
  for key, stride in (('seg.model.output_stride', seg.model.output_stride),
                      ('seg.predict_model.output_stride', pred.model.output_stride)):
    if stride not in (8, 16, 32):
      raise ConfigError(f'config.{key}={stride} must be 8, 16 or 32')
  if seg.data.crop_size % seg.model.output_stride:
    raise ConfigError(f"the segmenter's crop {seg.data.crop_size} (config.seg.data.crop_size or "
                      'config.data.crop_size) must be a multiple of its output stride '
                      f'{seg.model.output_stride}')
  if seg.train.steps < 0 or seg.train.batch_size <= 0:
    raise ConfigError('config.seg.train.steps must be >= 0 and config.seg.train.batch_size '
                      'positive')
  if config.seg.max_classes <= 0:
    raise ConfigError(f'config.seg.max_classes={config.seg.max_classes} must be positive')


def _validate_random_walk(config):
  """config.pseudo, config.ir_labels, config.boundary, config.random_walk."""
  _choice(config.pseudo.method, 'pseudo.method', PSEUDO_METHODS)
  _unit(config, 'ir_labels.conf_fg')
  _unit(config, 'ir_labels.conf_bg')
  if config.ir_labels.conf_bg > config.ir_labels.conf_fg:
    raise ConfigError(f'config.ir_labels.conf_bg={config.ir_labels.conf_bg} must not exceed '
                      f'config.ir_labels.conf_fg={config.ir_labels.conf_fg}')
  init = str(config.boundary.init)
  if init not in ('recurseed', 'scratch') and not init.startswith(('imagenet:', 'affinity:')):
    raise ConfigError(f'config.boundary.init={init!r} is not one of: {", ".join(BOUNDARY_INITS)}')
  b = boundary_config(config)  # raises naming config.boundary.<section>.<key>
  for key in ('radius', 'feature_size'):
    _at_least(config, f'boundary.{key}', 1)
  if b.data.crop_size % 16:
    raise ConfigError(f"the boundary network's crop {b.data.crop_size} (config.boundary.data."
                      'crop_size or config.data.crop_size) must be a multiple of 16')
  cells, radius = b.data.crop_size // 4, config.boundary.radius
  if cells < 2 * radius - 1:
    raise ConfigError(f'config.boundary.radius={radius} needs crops of at least '
                      f'{4 * (2 * radius - 1)} pixels (2 * radius - 1 cells of 4), but the '
                      f"boundary network's crop is {b.data.crop_size} (config.boundary.data."
                      'crop_size)')
  if b.train.steps < 0 or b.train.batch_size <= 0:
    raise ConfigError('config.boundary.train.steps must be >= 0 and config.boundary.train.'
                      'batch_size positive')
  w = config.random_walk
  if w.beta <= 0:
    raise ConfigError(f'config.random_walk.beta={w.beta} must be positive')
  for key, low in (('exp_times', 0), ('radius', 1), ('size', 0), ('batch_size', 1)):
    _at_least(config, f'random_walk.{key}', low)
  if w.size % 16:
    raise ConfigError(f'config.random_walk.size={w.size} must be a multiple of 16 (0: automatic)')
  _unit(config, 'random_walk.bg')
