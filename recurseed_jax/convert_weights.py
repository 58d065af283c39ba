"""Converts a PyTorch checkpoint once into an Orbax checkpoint, or a .pth into an .npz.

    # torchvision ImageNet weights -> the backbone of the config's network
    python -m recurseed_jax.convert_weights --kind imagenet --src resnet50.pth \
        --dst pretrained/resnet50 --config configs/voc12_rs50.py
    # the authors' released RS+EPM network (decoder low-level channels 256, their dilations)
    python -m recurseed_jax.convert_weights --kind rsepm --src last.pth --dst pretrained/rsepm_r50 \
        --config configs/voc12_rs50.py --config.model.low_level_channels=256 \
        --config.model.dilation_scheme=authors
    # a machine without torch: make an .npz of the same keys where torch is
    python -m recurseed_jax.convert_weights --to-npz --src last.pth --dst last.npz

The network is built from `--config` (plus `--config.x=y` overrides, as in launch.py) with
`--num_classes` foreground classes (default: config.data.num_classes): RecurSeedNet for imagenet
and rsepm, DeepLabNet with `model.segmenter_head` for deeplab, the random walk's BoundaryNet for
affinity (the authors' AffinityNet, edge layers). Only shapes are traced (nothing is
compiled); the converted tensors, and only those, go to <dst> (an Orbax checkpoint plus
import.json), which `model.init=<kind>:<dst>` then loads without torch and without renaming.
"""

import os
import sys

from absl import flags
import jax
import jax.numpy as jnp
from ml_collections import config_flags
import numpy as np

from recurseed_jax import cli
from recurseed_jax import config_lib
from recurseed_jax import io_utils
from recurseed_jax import models
from recurseed_jax.models import weights

_DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                               'configs', 'default.py')


def _parse(argv):
  # Fresh flags per call: in-process callers (tests) and launch.py's global FLAGS never clash.
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file('config', _DEFAULT_CONFIG, 'ml_collections config file',
                                  flag_values=fv, lock_config=True, sys_argv=argv)
  flags.DEFINE_enum('kind', None, weights.KINDS, 'what the checkpoint holds', flag_values=fv)
  flags.DEFINE_string('src', None, '.pth / .npz state_dict to read', flag_values=fv)
  flags.DEFINE_string('dst', None, 'output folder (or .npz with --to-npz)', flag_values=fv)
  flags.DEFINE_integer('num_classes', None, 'foreground classes (default: config)',
                       flag_values=fv)
  flags.DEFINE_bool('strict', True, '--nostrict: class-dependent layers of another shape are '
                    'left out (the run keeps its own init for them)', flag_values=fv)
  flags.DEFINE_bool('to-npz', False, 'only rewrite --src (.pth) as an .npz at --dst',
                    flag_values=fv)
  fv(argv)
  return fv


def to_npz(src, dst):
  """Rewrites a .pth state_dict (read with weights_only=True) as an .npz of the same keys."""
  state = weights.read_state_dict(src)
  io_utils.save_npz(dst, **state)
  return len(state)


def build(kind, config, num_classes=None):
  """The network a `kind` of checkpoint fills, from `config.model`."""
  num_classes = num_classes or config.data.num_classes
  if kind == 'deeplab':
    return models.build_deeplab(config.model, num_classes)
  if kind == 'affinity':  # the authors' AffinityNet: a BoundaryNet at their dilations
    with config.unlocked():
      config.model.dilation_scheme = 'authors'
    return models.build_boundary(config.model, feature_size=config.boundary.feature_size)
  return models.build_model(config.model, num_classes)


def convert(kind, src, dst, config, num_classes=None, strict=True):
  """Imports `src` into the config's network and writes the imported tensors to `dst`."""
  model = build(kind, config, num_classes)
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
  like = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)
  variables, report = weights.import_state_dict(kind, weights.read_state_dict(src), like,
                                                strict=strict)
  weights.save_converted(dst, kind, variables, report, source=os.path.abspath(src))
  return report


def load_converted(directory, like_variables, strict=True):
  """Reads a converted checkpoint back into the structure of `like_variables`."""
  return weights.load_converted(directory, like_variables, strict=strict)


def main(argv):
  try:
    fv = _parse(argv)
  except flags.Error as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  if not fv.src or not fv.dst:
    print('error: --src and --dst are required', file=sys.stderr)
    return 2
  try:
    if fv['to-npz'].value:
      n = to_npz(fv.src, fv.dst)
      print(f'wrote {n} tensors to {fv.dst}')
      return 0
    if not fv.kind:
      print(f'error: --kind is required ({", ".join(weights.KINDS)})', file=sys.stderr)
      return 2
    report = convert(fv.kind, fv.src, fv.dst, config_lib.complete(fv.config), fv.num_classes,
                     fv.strict)
  except (OSError, ValueError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  print(f'wrote {len(report.loaded)} tensors to {os.path.abspath(fv.dst)}; use '
        f'--config.model.init={fv.kind}:{fv.dst}')
  if report.skipped:
    print(f'left out (class count differs; the run keeps its init): {", ".join(report.skipped)}')
  return 0


def cli_main():
  """The `recurseed-convert-weights` command (pyproject.toml)."""
  sys.exit(cli.run(main, sys.argv))


if __name__ == '__main__':
  cli_main()
