"""Config validation before any compute, and a checkpoint whose shapes do not fit the config.

Elsewhere: thresholds outside [0, 1], unknown mix.kind / rs.refine (tests/test_validate.py::
test_bad_value_names_its_key), an unknown stage name (tests/test_validate.py::test_parse_stages,
tests/test_launch.py::test_bad_input_one_line_error), a train batch that does not divide over
the devices (tests/test_parallel.py, 4 devices).
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from recurseed_jax import checkpoint as ckpt_lib
from recurseed_jax import config_lib
from recurseed_jax import train
import reference
import test_launch
from test_launch import TINY


def _launch(*args, **env):
  r = test_launch.launch(*args, **env)
  return r, r.stderr.strip().splitlines()[-1] if r.stderr.strip() else ''


def test_crop_larger_than_every_bucket():
  cfg = reference.default_config(**{'data.crop_size': 64, 'infer.buckets': ((48, 64), (64, 48))})
  with pytest.raises(ValueError, match=r'config.data.crop_size=64 is larger than every bucket') \
      as info:
    config_lib.validate(cfg)
  assert 'config.infer.buckets=((48, 64), (64, 48))' in str(info.value)
  cfg.infer.buckets = ((48, 64), (64, 64))
  config_lib.validate(cfg)


@pytest.mark.slow
def test_infer_batch_not_divisible_by_the_devices_stops_before_any_compute(tmp_path):
  r, last = _launch(f'--workdir={tmp_path / "run"}', '--config.infer.batch_size=6',
                    XLA_FLAGS='--xla_force_host_platform_device_count=4')
  assert r.returncode == 2 and 'config.infer.batch_size=6' in last and '4 local devices' in last
  assert not os.path.exists(tmp_path / 'run')  # stopped before even the workdir


def _shapes_tree(width):
  cfg = reference.default_config(**{'model.width': width, 'data.crop_size': 32})
  like = train.abstract_state(cfg, train.build_model(cfg, 5), (1, 32, 32, 3),
                              jax.sharding.SingleDeviceSharding(jax.devices()[0]))
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), like.saveable())


def test_checkpoint_of_other_shapes_names_first_key_and_both_shapes(tmp_path):
  with ckpt_lib.Checkpoints(str(tmp_path)) as ckpts:
    ckpts.save(3, dict(params=dict(conv=dict(kernel=np.zeros((3, 3, 4, 8), np.float32))),
                       step=np.zeros((), np.int32)))
  with ckpt_lib.Checkpoints(str(tmp_path)) as ckpts:
    with pytest.raises(ckpt_lib.CheckpointMismatchError) as info:
      ckpts.restore(dict(params=dict(conv=dict(kernel=np.zeros((3, 3, 4, 16), np.float32))),
                         step=np.zeros((), np.int32)))
    msg = str(info.value)
    assert os.path.join(str(tmp_path), '3') in msg
    assert 'params/conv/kernel has shape (3, 3, 4, 8) in the checkpoint but (3, 3, 4, 16)' in msg
    with pytest.raises(ckpt_lib.CheckpointMismatchError, match='params/conv/bias .* only in'):
      ckpts.restore(dict(params=dict(conv=dict(kernel=np.zeros((3, 3, 4, 8), np.float32),
                                               bias=np.zeros(8, np.float32))),
                         step=np.zeros((), np.int32)))


@pytest.mark.slow
def test_launch_on_a_workdir_trained_with_another_model_width(tmp_path):
  """A TINY run (width 8) finding a width-16 checkpoint: one line, before any training."""
  with ckpt_lib.Checkpoints(str(tmp_path / 'run' / 'train' / 'checkpoints')) as ckpts:
    ckpts.save(4, _shapes_tree(16))
  r, last = _launch(f'--workdir={tmp_path / "run"}', '--stages=train', *TINY)
  assert r.returncode == 2, r.stderr[-3000:]
  assert 'train/checkpoints/4 does not fit the config' in last
  assert 'has shape (16,) in the checkpoint but (8,) for this config' in last
