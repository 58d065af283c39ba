"""The multi-stage parts: derived configs, the segmenter's step and prediction, pseudo-mask input,
the seed confusion metric, and the ablation's table and plot (its runs are launch.py's stages).

The end-to-end multi-stage run (train_rs .. predict .. export) is tests/test_launch.py's.
"""

import functools
import importlib
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import synthetic_ablation
from configs import synthetic_multistage
from data_pipeline import providers
from recurseed_jax import ablation
from recurseed_jax import config_lib
from recurseed_jax import confusion
from recurseed_jax import infer
from recurseed_jax import io_utils
from recurseed_jax import models
from recurseed_jax import stages
from recurseed_jax import train
import reference

C = 4


# --- configs -----------------------------------------------------------------------------------
def test_seg_and_predict_configs_override_only_their_fields():
  cfg = synthetic_multistage.get_config()
  with cfg.unlocked():
    cfg.seg.train.batch_size = 8
    cfg.seg.model.stage_sizes = (1, 2, 1, 1)
    cfg.seg.predict_model.output_stride = 4
  seg = config_lib.segmenter_config(cfg)
  assert seg.model.network == 'deeplab' and seg.train.batch_size == 8
  assert seg.model.stage_sizes == (1, 2, 1, 1) and seg.model.output_stride == 8
  assert seg.infer.class_threshold == 0.05 and not seg.train.upper_bound
  assert cfg.model.network == 'recurseed' and cfg.train.batch_size == 16  # the run's untouched
  assert config_lib.predict_config(cfg).model.output_stride == 4
  with cfg.unlocked():
    cfg.seg.optim.learning_rate = 0.1  # a typo: optim has `lr`
  with pytest.raises(ValueError, match=r'config\.seg\.optim\.learning_rate'):
    config_lib.segmenter_config(cfg)


@pytest.mark.parametrize('name', ['default', 'synthetic_multistage', 'synthetic_ablation',
                                  'voc12_rs50', 'coco14_rs50', 'voc12_multistage_v3p',
                                  'voc12_multistage_v2', 'coco14_multistage_v3p'])
def test_every_config_validates(name):
  cfg = importlib.import_module(f'configs.{name}').get_config()
  if cfg.data.name != 'synthetic':
    cfg.data.root = '/data'  # required on real data; nothing is read here
  config_lib.validate(cfg)
  if 'train_seg' in cfg.stages:
    seg = config_lib.segmenter_config(cfg)
    assert seg.data.crop_size % seg.model.output_stride == 0


# --- the segmenter: step and prediction --------------------------------------------------------
def _deeplab(head='v3plus'):
  cfg = reference.default_config(**{'model.width': 8, 'model.segmenter_head': head})
  model = models.build_deeplab(cfg.model, C)
  # Jitted: one compile, not one per op of the initialisers.
  variables = jax.jit(functools.partial(model.init, train=False))(jax.random.key(0),
                                                                 jnp.zeros((1, 32, 32, 3)))
  return cfg, model, variables


@pytest.mark.slow
def test_segmenter_step_matches_numpy_and_ignores_padding():
  cfg, model, variables = _deeplab()
  predict = infer.make_predict_fn(model, (1.0, 0.5), True, align=8)
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (1, 40, 24, 3), dtype=np.uint8)
  x = (image / 255.0 - np.asarray(cfg.data.mean)) / np.asarray(cfg.data.std)
  out = jax.device_get(predict(variables, jnp.asarray(x, jnp.float32)))
  seg = np.asarray(out['seg'][0], np.float64)
  np.testing.assert_allclose(out['class_prob'][0], seg[..., 1:].max(axis=(0, 1)), rtol=1e-6)
  np.testing.assert_allclose(seg.sum(-1), 1.0, rtol=1e-5)

  peak = seg.max(axis=(0, 1))  # [C + 1]: background is a label like the others
  threshold = float(np.sort(peak)[-3])  # keeps the 3 labels of largest peak
  step = infer.make_segmenter_step(predict, cfg.data.mean, cfg.data.std, threshold,
                                   max_classes=2)
  # The same image padded into a larger bucket: results cropped back are the unpadded ones.
  padded = np.zeros((2, 48, 32, 3), np.uint8)
  padded[0, :40, :24] = image[0]
  res = jax.device_get(step(variables, padded, np.array([[40, 24], [48, 32]], np.int32), None))
  order = np.argsort(-peak, kind='stable')
  np.testing.assert_array_equal(res['channels'][0], order[:2])  # at most 2, largest peak first
  # The kept labels' mean softmax as it is (the authors' CRF takes -log of it, unnormalised).
  np.testing.assert_allclose(res['probs'][0, :40, :24], seg[..., order[:2]], rtol=1e-4,
                             atol=1e-6)
  agree = res['pred'][0, :40, :24] == order[:2][seg[..., order[:2]].argmax(-1)]
  assert agree.mean() > 0.99  # ties within float noise may differ
  # A threshold nothing reaches keeps no label: no channel, prediction all background.
  none = jax.device_get(infer.make_segmenter_step(predict, cfg.data.mean, cfg.data.std, 1.01)(
      variables, padded, np.array([[40, 24], [48, 32]], np.int32), None))
  assert (none['channels'] == -1).all() and not none['pred'].any()
  products = list(infer._unpack(dict(indices=[7], valid_hw=np.array([[40, 24]]),
                                     images=padded[:1]), {'seg': res}))
  (i, _, per), = products
  assert i == 7 and per['seg']['probs'].shape == (40, 24, 2)
  assert per['seg']['pred'].shape == (40, 24)
  np.testing.assert_array_equal(per['seg']['channels'], order[:2])


@pytest.mark.slow
def test_seg_supervision_step_learns_the_masks():
  cfg, model, variables = _deeplab(head='v2')
  cfg = reference.override(cfg, {'model.network': 'deeplab', 'data.crop_size': 32,
                                 'train.steps': 20, 'model.aspp_dropout': 0.0,
                                 'model.decoder_dropout': (0.0, 0.0)})
  state = train.init_state(cfg, variables['params'], variables['batch_stats'], C)
  step = jax.jit(train.make_train_step(cfg, model, 'seg'))
  batch = reference.fake_batch(0, 4, 32, C)
  losses = []
  for _ in range(6):
    state, m = step(state, batch)
    losses.append(float(m['loss']))
  assert set(m) == {'seg', 'loss', 'lr', 'finite', 'nonfinite', 'nonfinite_run'}
  assert losses[-1] < losses[0] and all(np.isfinite(losses))
  assert train.network_builder(cfg) is models.build_deeplab


def test_seed_confusion_matches_bincount():
  rng = np.random.default_rng(1)
  seed = rng.random((2, 6, 7, C)).astype(np.float32)
  truth = rng.integers(0, C + 1, (2, 6, 7))
  truth[0, 0, :3] = 255
  valid = np.ones((2, 6, 7), bool)
  valid[1, :, -2:] = False
  conf = np.asarray(confusion.seed_confusion(jnp.asarray(truth), jnp.asarray(seed),
                                         jnp.asarray(valid), C))
  pred = np.argmax(np.concatenate([1 - seed.max(-1, keepdims=True), seed], -1), -1)
  ok = (truth != 255) & valid
  expected = np.bincount(truth[ok] * (C + 1) + pred[ok], minlength=(C + 1) ** 2)
  np.testing.assert_array_equal(conf, expected.reshape(C + 1, C + 1))


# --- pseudo masks as the segmenter's ground truth ----------------------------------------------
def test_train_batches_read_the_pseudo_masks(tmp_path):
  cfg = reference.default_config(**{'data.num_train': 16, 'data.num_val': 4,
                                    'data.image_size': 32, 'data.crop_size': 32,
                                    'data.scale_range': (1.0, 1.0), 'data.flip': False})
  data = providers.build(cfg, str(tmp_path))
  split = data.split('train')
  mask_dir = tmp_path / 'pseudo'
  mask_dir.mkdir()
  for k, image_id in enumerate(split.ids[:-1]):
    io_utils.save_palette_png(str(mask_dir / f'{image_id}.png'), np.full((32, 32), k % 3, np.uint8))
  with pytest.raises(FileNotFoundError, match=split.ids[-1]):
    data.train_batches(0, mask_dir=str(mask_dir))
  io_utils.save_palette_png(str(mask_dir / f'{split.ids[-1]}.png'), np.zeros((32, 32), np.uint8))
  seg_cfg = reference.override(cfg.copy_and_resolve_references(), {'train.batch_size': 4})
  batch = next(iter(data.train_batches(0, config=seg_cfg, mask_dir=str(mask_dir))))
  assert batch['mask'].shape == (4, 32, 32)  # the segmenter's batch size, not the run's 16
  for mask in batch['mask']:  # each a constant pseudo mask, never the true one
    assert len(np.unique(mask)) == 1 and mask[0, 0] in (0, 1, 2)


# --- the ablation ------------------------------------------------------------------------------
def test_ablation_variants_order_and_overrides():
  cfg = synthetic_ablation.get_config()
  variants = config_lib.ablation_variants(cfg)
  assert [v[0] for v in variants] == list(cfg.ablation.order)
  kinds = {name: (c.mix.kind, c.rs.refine, c.train.upper_bound) for name, _, c in variants}
  assert kinds['rs_nomix'] == ('none', 'scg', False)
  assert kinds['rs_edgepredictmix'] == ('edgepredictmix', 'scg', False)
  assert kinds['rs_certainmix_pamr'] == ('certainmix', 'pamr', False)
  assert kinds['rs_certainmix'] == ('certainmix', 'scg', True)
  with cfg.unlocked():
    cfg.ablation.order = ('rs_nomix', 'rs_nomx')
  with pytest.raises(ValueError, match="'rs_nomx'"):
    config_lib.ablation_variants(cfg)


def _fake_variant(workdir, name, summary, curves):
  for sub, curve in curves.items():
    os.makedirs(os.path.join(workdir, name, sub))
    with open(os.path.join(workdir, name, sub, 'metrics.jsonl'), 'w') as f:
      for step, value in curve:
        f.write(json.dumps(dict(step=step, loss=1.0, seed_miou=value)) + '\n')
      f.write(json.dumps(dict(step=curve[-1][0] + 1, loss=1.0)) + '\n')  # no seed_miou
  io_utils.save_json(os.path.join(workdir, name, 'summary.json'), summary)


def test_ablation_table_and_plot(tmp_path):
  cfg = synthetic_ablation.get_config()
  with cfg.unlocked():
    cfg.ablation.order = ('rs_certainmix', 'rs_nomix')
  variants = [v for v in config_lib.ablation_variants(cfg) if v[0] in cfg.ablation.order]
  wd = str(tmp_path)
  _fake_variant(wd, 'rs_certainmix', dict(rs_seed_miou=0.6, cam_seed_miou=0.4, val_miou=0.55,
                                          upper_bound_val_miou=0.9, seconds=dict(train_rs=10)),
                {'train': [(50, 0.3), (100, 0.5)], 'cam_baseline': [(50, 0.2), (100, 0.35)]})
  _fake_variant(wd, 'rs_nomix', dict(rs_seed_miou=0.5, val_miou=0.5,
                                     seconds=dict(train_rs=4, seeds=2)), {'train': [(50, 0.25)]})
  rows, curves = ablation.collect(wd, variants)
  by_name = {r['name']: r for r in rows}
  assert list(by_name) == ['rs_certainmix', 'rs_certainmix/cam_baseline',
                           'rs_certainmix/upper_bound', 'rs_nomix']
  assert by_name['rs_certainmix']['train_seed'] == 0.5 and by_name['rs_nomix']['seconds'] == 6
  assert by_name['rs_certainmix/cam_baseline']['seed'] == 0.4
  assert by_name['rs_certainmix/upper_bound']['val'] == 0.9
  assert curves['CAM only (plain-CAM baseline)'] == [(50, 0.2), (100, 0.35)]
  text = ablation.table(rows, 'python launch.py --config configs/synthetic_ablation.py')
  assert '| RecurSeed, no mixing (`rs_nomix`) | 25.0 | 50.0 | - | 50.0 | - | 6 |' in text
  assert ('| fully supervised upper bound (`rs_certainmix/upper_bound`) | - | - | - | 90.0 | - '
          '| - |') in text
  png = os.path.join(wd, 'plot.png')
  ablation.plot(curves, png)
  with open(png, 'rb') as f:
    assert f.read(8) == b'\x89PNG\r\n\x1a\n'
  assert os.listdir(wd).count('plot.png') == 1 and not [n for n in os.listdir(wd) if 'tmp' in n]


def test_ablation_rows_read_the_variants_pseudo_masks(tmp_path):
  """A multi-stage row reports the pseudo masks of its own config.pseudo.method and the
  segmenter trained on them."""
  cfg = synthetic_ablation.get_config()
  variants = [v for v in config_lib.ablation_variants(cfg) if v[0].startswith('ms_')]
  wd = str(tmp_path)
  for name, _, vcfg in variants:
    _fake_variant(wd, name, dict(pseudo_mask_miou=0.7, pseudo_mask_rw_miou=0.75,
                                 pseudo_mask_rw_crf_miou=0.8, multistage_val_miou=0.6,
                                 seconds=dict(train_seg=3)), {'train': [(50, 0.3)]})
  rows, _ = ablation.collect(wd, variants)
  by = {r['name']: r for r in rows}
  assert (by['ms_crf']['pseudo'], by['ms_random_walk']['pseudo'],
          by['ms_random_walk_crf']['pseudo']) == (0.7, 0.75, 0.8)
  assert all(by[n]['multistage'] == 0.6 for n in by)
  assert '| 80.0 | - | 60.0 | 3 |' in ablation.table(rows, 'cmd')


def test_reused_stages_are_linked_not_rerun(tmp_path):
  src = tmp_path / 'a'
  (src / 'stages').mkdir(parents=True)
  (src / 'pseudo_masks').mkdir()
  (src / 'pseudo_masks' / 'x.png').write_bytes(b'png')
  io_utils.save_json(str(src / 'stages' / 'crf.json'), dict(seconds=1.0))
  ctx = stages.Context(config=None, workdir=str(tmp_path / 'b'), data=None, class_names=())
  stages.link_stages(str(src), ctx, ['crf'])
  linked = tmp_path / 'b' / 'pseudo_masks' / 'x.png'
  assert linked.read_bytes() == b'png' and os.stat(linked).st_ino == os.stat(
      src / 'pseudo_masks' / 'x.png').st_ino  # a hard link: no copy of the data
  assert (tmp_path / 'b' / 'stages' / 'crf.json').exists()
  stages.link_stages(str(src), ctx, ['crf'])  # again (a rerun after a kill): no error
  with pytest.raises(FileNotFoundError, match="cannot reuse stage 'seeds'"):
    stages.link_stages(str(src), ctx, ['seeds'])
