"""The config layer: completion from the defaults, overrides, flag keys, derived configs."""

import ml_collections
import pytest

from configs import default
from configs import synthetic_ablation
from configs import synthetic_multistage
from recurseed_jax import config_lib


def test_complete_adds_missing_fields_and_keeps_set_ones():
  partial = ml_collections.ConfigDict({'train': {'steps': 7}, 'extra': {'x': 1}})
  done = config_lib.complete(partial)
  assert done is partial
  assert done.train.steps == 7  # kept
  assert done.train.batch_size == default.get_config().train.batch_size  # added
  assert done.rs.scg.iteration == 1 and done.infer.interpolation == 'nearest'
  assert done.extra.x == 1  # a section the defaults lack stays
  config_lib.validate(done)


def test_check_flag_keys_names_the_nearest_field():
  cfg = default.get_config()
  config_lib.check_flag_keys(cfg, ['train.steps', 'rs.scg.iteration'])
  cases = {'train.stpes': "config.train has no field 'stpes'; did you mean 'steps'?",
           'trian.steps': "config has no field 'trian'; did you mean 'train'?",
           'train.steps.x': 'config.train.steps is not a section',
           'rs.zzzzzz': "config.rs has no field 'zzzzzz'"}
  for key, message in cases.items():
    with pytest.raises(config_lib.ConfigError) as info:
      config_lib.check_flag_keys(cfg, [key])
    assert str(info.value) == f'--config.{key}: {message}'


def test_override_refuses_new_fields():
  cfg = default.get_config()
  out = config_lib.derive(cfg, {'mix': {'kind': 'none'}}, 'config.test')
  assert out.mix.kind == 'none' and cfg.mix.kind == 'certainmix'
  with pytest.raises(config_lib.ConfigError, match=r"config.test.mix.knd.*did you mean 'kind'"):
    config_lib.derive(cfg, {'mix': {'knd': 'none'}}, 'config.test')


def test_segmenter_and_predict_configs():
  cfg = synthetic_multistage.get_config()
  seg = config_lib.segmenter_config(cfg)
  assert seg.model.network == 'deeplab' and not seg.train.cam_baseline
  assert seg.infer.interpolation == 'bilinear'  # config.seg.infer: the authors' DeepLab recipe
  with cfg.unlocked():
    cfg.seg.predict_model.output_stride = 16
  assert config_lib.predict_config(cfg).model.output_stride == 16
  assert seg.model.output_stride == cfg.model.output_stride  # training keeps the run's
  with cfg.unlocked():
    cfg.seg.train.bogus = 1
  with pytest.raises(config_lib.ConfigError, match='config.seg.train.bogus'):
    config_lib.segmenter_config(cfg)


def test_ablation_variants_in_order():
  cfg = synthetic_ablation.get_config()
  names = [name for name, _, _ in config_lib.ablation_variants(cfg)]
  assert names[:len(cfg.ablation.order)] == list(cfg.ablation.order)
  with cfg.unlocked():
    cfg.ablation.order = ('rs_nomix', 'rs_nomx')
  with pytest.raises(config_lib.ConfigError, match="'rs_nomx'"):
    config_lib.ablation_variants(cfg)
