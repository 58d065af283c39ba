"""config.infer.dtype: bfloat16 inference gives float32's pseudo masks (>= 99.9 % of pixels).

A small random RecurSeedNet whose segmentation classifier is fitted to the object masks of
synthetic scenes (bench/fitted_seeds.py), so its seeds are confident and object-shaped as a
trained network's are; the seeds -> stored seed -> CRF path of the stages in both dtypes.
Width 16 and 64 head features: with width 8 and 32 the fit leaves ambiguous areas inside the
objects (as little as 89 % of the pixels right), where the CRF flips on any perturbation.
"""

import functools

import jax
import numpy as np
import pytest

from bench import fitted_seeds
from recurseed_jax import infer
from recurseed_jax import models
import reference

pytestmark = pytest.mark.slow  # fitting the network and two dtypes' steps: about a minute

C = 4
SIZES = ((150, 200), (127, 200))
AGREEMENT = 0.999  # the share of identical pseudo-mask pixels required (issue: >= 99.9 %)


@functools.lru_cache(maxsize=None)
def _fitted():
  cfg = reference.default_config(**{
      'model.stage_sizes': (1, 1, 1, 1), 'model.width': 16, 'model.output_stride': 16,
      'model.aspp_rates': (6, 12, 18), 'model.aspp_channels': 64, 'model.decoder_channels': 64,
      'model.low_level_channels': 64, 'infer.buckets': ((160, 208),), 'infer.batch_size': 2})
  model = models.build_model(cfg.model, C)
  variables = jax.jit(functools.partial(model.init, train=False))(  # one compile, not one per op
      jax.random.key(0), np.zeros((1, 64, 64, 3), np.float32))
  images, maps, labels = fitted_seeds.scenes(SIZES, C)
  variables = fitted_seeds.fit_seg_classifier(model, variables, images, maps, cfg.data.mean,
                                              cfg.data.std)
  return cfg, model, variables, fitted_seeds.split_of(images, maps, labels)


def test_bfloat16_pseudo_masks_agree_with_float32():
  cfg, model, variables, split = _fitted()
  res = fitted_seeds.compare_dtypes(cfg, model, variables, split)
  assert res['truth']['float32'] > 0.95  # the seeds have structure: the masks follow the objects
  assert 0 < res['seed_diff'] < 0.1  # bfloat16 did run, and the seeds stay close
  assert res['agreement'] >= AGREEMENT, f"{100 * res['agreement']:.3f} % identical pixels"


def test_step_from_config_computes_in_the_configured_dtype():
  """The network's convolutions run in config.infer.dtype; the products stay float32."""
  cfg, model, variables, split = _fitted()
  # The batch and kept classes of the first test's steps: its programs load from the cache.
  images = np.zeros((2, 160, 208, 3), np.uint8)
  sizes = np.array(SIZES, np.int32)
  num_kept = int(split.labels.sum(1).max())
  for dtype, want in (('float32', 'f32'), ('bfloat16', 'bf16')):
    cfg = reference.override(cfg, {'infer.dtype': dtype})
    step = infer.step_from_config(cfg, model, num_kept=num_kept)
    (_, jitted, args, _), = [p for p in step.plan_parts(variables, images, sizes, split.labels)
                             if p[0] == 'pass scale 1']
    hlo = jitted.lower(*args).as_text()
    convs = [line for line in hlo.splitlines() if 'stablehlo.convolution' in line]
    assert convs and all(line.rstrip().endswith(f'x{want}>') for line in convs)
    out = step(variables, images, sizes, split.labels)
    assert all(v.dtype in (np.float32, np.int32) for v in jax.tree.leaves(out))
