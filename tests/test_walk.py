"""The batched random-walk step (walk.py) against IRN's per-image recipe composed from its parts,
and the boundary network's training objective against the loss computed directly.

Per image, IRN flips the unpadded image, pads both to its crop size, cuts the boundary logits to
the image's cells and averages them with the flipped one's (models.boundary_net.predict_edge);
our step does it for a batch padded into one square, mirroring each image within its own width.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from recurseed_jax import config_lib
from recurseed_jax import objectives
from recurseed_jax import train
from recurseed_jax import walk
from recurseed_jax.method import affinity
from recurseed_jax.method import random_walk
from recurseed_jax.models import boundary_net
import reference

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
SIZE = 48  # the padded square
SIZES = ((40, 27), (33, 48))  # odd sizes: partial cells of 4, and one full width


@functools.lru_cache(maxsize=None)
def _net():
  model = boundary_net.BoundaryNet((1, 1, 1, 1), width=8, feature_size=8)
  variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, SIZE, SIZE, 3)))  # 1 compile
  # Non-trivial statistics and a non-zero last layer: boundaries that vary over the image.
  variables = jax.tree.map(lambda x: x + 0.05 * jnp.sin(jnp.arange(x.size).reshape(x.shape)),
                           variables)
  return model, variables


def _scene(seed=0):
  rng = np.random.default_rng(seed)
  images, seeds, classes = [], [], []
  for h, w in SIZES:
    images.append(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    s = rng.random((h, w, 2)).astype(np.float32) ** 3
    seeds.append(s / s.max(axis=(0, 1), keepdims=True))
    classes.append(np.array([1, 3], np.int32))
  return images, seeds, classes


def _np_strided(seed, eps=1e-5):
  """Cell means over 4 x 4 blocks of the image (partial blocks: their pixels), / (max + eps)."""
  h, w, k = seed.shape
  out = np.zeros((-(-h // 4), -(-w // 4), k))
  for i in range(out.shape[0]):
    for j in range(out.shape[1]):
      out[i, j] = seed[4 * i:4 * i + 4, 4 * j:4 * j + 4].reshape(-1, k).mean(axis=0)
  return out / (out.max(axis=(0, 1), keepdims=True) + eps)


def test_strided_seed_matches_numpy():
  _, seeds, _ = _scene(1)
  padded = np.zeros((len(seeds), SIZE, SIZE, 2), np.float32)
  for j, s in enumerate(seeds):
    padded[j, :s.shape[0], :s.shape[1]] = s
  got = np.asarray(walk.strided_seed(jnp.asarray(padded), jnp.asarray(SIZES)))
  for j, s in enumerate(seeds):
    ref = _np_strided(s.astype(np.float64))
    np.testing.assert_allclose(got[j, :ref.shape[0], :ref.shape[1]], ref, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_walk_step_matches_irn_per_image():
  model, variables = _net()
  images, seeds, classes = _scene()
  b = len(images)
  batch = np.zeros((b, SIZE, SIZE, 3), np.uint8)
  padded_seeds = np.zeros((b, SIZE, SIZE, 2), np.float32)
  for j, (image, s) in enumerate(zip(images, seeds)):
    batch[j, :image.shape[0], :image.shape[1]] = image
    padded_seeds[j, :s.shape[0], :s.shape[1]] = s
  step = walk.make_walk_step(model, MEAN, STD, exp_times=4, with_scores=True)
  out = jax.device_get(step(variables, batch, np.array(SIZES, np.int32), padded_seeds,
                            np.stack(classes)))
  agree = []
  for j, (image, s, cls) in enumerate(zip(images, seeds, classes)):
    h, w = image.shape[:2]
    x = (image.astype(np.float32) / 255.0 - np.float32(MEAN)) / np.float32(STD)
    edge = boundary_net.predict_edge(model, variables, jnp.asarray(x[None]), pad_to=SIZE)
    assert float(jnp.std(edge)) > 1e-3  # boundaries vary: the test is not vacuous
    rw = random_walk.propagate(jnp.asarray(_np_strided(s)[None], jnp.float32), edge,
                               exp_times=4)
    ref = np.asarray(random_walk.sem_seg_labels(rw, cls[None], (h, w)))[0]
    agree.append((out['labels'][j, :h, :w] == ref).mean())
    assert not out['labels'][j, h:].any() and not out['labels'][j, :, w:].any()
    assert set(np.unique(ref).tolist()) <= {0, 2, 4}
    # The scores the CRF takes after the walk: background, then the normalised walk.
    assert out['scores'][j, :h, :w, 0].min() == pytest.approx(0.25)
    np.testing.assert_array_equal(out['lut'][j], [0, 2, 4])
  # Ties of the argmax may flip within float rounding; nothing else differs.
  assert min(agree) > 0.995, agree


@pytest.mark.slow
def test_boundary_objective_is_irn_loss_and_backbone_stays_frozen():
  cfg = reference.default_config(**{
      'model.width': 8, 'data.crop_size': 32, 'boundary.radius': 3, 'train.steps': 10})
  bcfg = config_lib.boundary_config(cfg)
  model = train.build_model(bcfg, 5)
  variables = jax.jit(model.init)(jax.random.key(1), jnp.zeros((1, 32, 32, 3)))
  state = train.init_state(bcfg, variables['params'], variables['batch_stats'], 0)
  batch = reference.fake_batch(0, 4, 32, 5)
  step = jax.jit(train.make_train_step(bcfg, model, 'boundary'))
  new, metrics = step(state, batch)
  logits = model.apply(variables, batch['image'])
  small = affinity.reduce_label(batch['mask'], 0.25)
  want = affinity.affinity_loss(affinity.edge_to_affinity(jax.nn.sigmoid(logits), 3),
                                affinity.pair_labels(small, 3))
  np.testing.assert_allclose(metrics['loss'], want['total'], rtol=1e-5)
  for key in ('bg_pos', 'fg_pos', 'neg'):
    np.testing.assert_allclose(metrics[key], want[key], rtol=1e-5)
  assert float(want['neg']) > 0 and float(want['fg_pos']) > 0  # every pair set is met
  same = jax.tree.map(lambda a, b: bool(jnp.all(a == b)), new.params['backbone'],
                      state.params['backbone'])
  assert all(jax.tree.leaves(same)), 'the frozen backbone moved (weight decay or gradient)'
  moved = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), new.params['fc_edge6'],
                       state.params['fc_edge6'])
  assert all(jax.tree.leaves(moved))
  assert objectives.SUPERVISIONS[-1] == 'boundary'
