"""Tests for config validation (recurseed_jax/config_lib.py) and stages.parse_stages."""

import re

import pytest

from configs import default
from recurseed_jax import config_lib
from recurseed_jax import stages
from reference import default_config as _config


def test_default_config_is_valid():
  config_lib.validate(default.get_config())


@pytest.mark.parametrize('overrides,key', [
    ({'rs.certain': 1.5}, 'rs.certain'),
    ({'rs.uncertain': -0.1}, 'rs.uncertain'),
    ({'mix.class_prob': 2.0}, 'mix.class_prob'),
    ({'rs.uncertain': 0.6}, 'rs.uncertain'),          # >= rs.certain (0.55)
    ({'rs.uncertain': 0.55}, 'rs.uncertain'),         # equal is not below
    ({'mix.kind': 'cutmix'}, 'mix.kind'),
    ({'rs.refine': 'crf'}, 'rs.refine'),
    ({'loss.cam_kind': 'l3'}, 'loss.cam_kind'),
    ({'rs.scg.levels': (1,)}, 'rs.scg.levels'),
    ({'rs.scg.levels': (3, 6)}, 'rs.scg.levels'),
    ({'model.output_stride': 4}, 'model.output_stride'),
    ({'rs.refine_stride': 5}, 'rs.refine_stride'),     # crop 64 is no multiple of 5
    ({'data.crop_size': 60}, 'data.crop_size'),       # 60 is no multiple of output stride 8
    ({'data.crop_size': 72, 'rs.refine_stride': 16}, 'data.crop_size'),
    ({'infer.scales': ()}, 'infer.scales'),
    ({'infer.dtype': 'float16'}, 'infer.dtype'),       # models.COMPUTE_DTYPES only
    ({'seg.infer.dtype': 'bf16'}, 'seg.infer.dtype'),
    ({'train.steps': 0}, 'train.steps'),
    ({'export.report_per_group': -1}, 'export.report_per_group'),
    ({'export.report_fixed': -1}, 'export.report_fixed'),
])
def test_bad_value_names_its_key(overrides, key):
  cfg = _config(**overrides)
  with pytest.raises(ValueError, match=re.escape(key)):
    config_lib.validate(cfg)


def test_crop_stride_message_names_both_keys():
  with pytest.raises(ValueError) as info:
    config_lib.validate(_config(**{'rs.refine_stride': 5}))
  msg = str(info.value)
  assert 'data.crop_size=64' in msg and 'rs.refine_stride=5' in msg


def test_parse_stages():
  assert stages.parse_stages(','.join(stages.STAGES)) == list(stages.STAGES)
  assert stages.parse_stages('train_rs,seeds,crf,train_seg,predict,evaluate,export') == [
      'train_rs', 'seeds', 'crf', 'train_seg', 'predict', 'evaluate', 'export']
  assert stages.parse_stages(' crf , train ') == ['crf', 'train_rs']  # the old name: an alias
  assert stages.parse_stages('evaluate') == ['evaluate']
  with pytest.raises(ValueError, match="'bogus'") as info:
    stages.parse_stages('train,bogus')
  assert 'known stages' in str(info.value)
  for text in ('', ' ', ',', ' , '):
    with pytest.raises(ValueError, match='empty'):
      stages.parse_stages(text)
