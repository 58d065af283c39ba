"""The multi-stage segmenter's configs, derived from the run's (METHOD.md sections 1 and 5).

The train_seg and predict stages train a DeepLabNet on the pseudo masks and predict with it. They
reuse the whole training and inference code with a config derived from the run's: `config.seg`
holds, per section (data, model, optim, train, infer), the fields that differ for the segmenter,
and `seg_config` copies the run's config with those replaced. So every field keeps the meaning
configs/default.py documents, and a segmenter setting is written once, where it differs.
`config.seg.predict_model` holds what changes between training and prediction (output stride 8
and the doubled ASPP rates, as DeepLab evaluates).
"""

from recurseed_jax import config_overrides

SECTIONS = ('data', 'model', 'optim', 'train', 'infer')
SUBFOLDER = 'segmenter'  # <workdir>/segmenter: its checkpoints and metrics


def seg_config(config):
  """The run's config with config.seg's fields in place: what train_seg trains with."""
  sections = {name: config.seg.get(name, {}) for name in SECTIONS}
  c = config_overrides.derive(config, sections, 'config.seg')
  with c.unlocked():
    c.model.network = 'deeplab'
    c.model.init = config.seg.init
    # The segmenter is one run: no baseline or upper-bound twins.
    c.train.cam_baseline = False
    c.train.upper_bound = False
    c.rs.seed_from_ema = False  # the segmenter predicts with its own final params
  return c


def predict_config(config):
  """seg_config with config.seg.predict_model in place: what the predict stage infers with."""
  model = config.seg.get('predict_model', {})
  return config_overrides.derive(seg_config(config), {'model': model}, 'config.seg.predict_model')

