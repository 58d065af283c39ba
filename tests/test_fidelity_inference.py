"""Seeds -> pseudo masks and multi-stage predictions against a PyTorch twin of the authors' code.

The twin is re-derived here from reading shjo-april/RecurSeed_and_EdgePredictMix:
- seeds (infer_rsepm.py with its defaults same=True, interpolation='nearest';
  RSEPM.forward_with_scales): per scale s, the normalised image resized bilinearly to
  (int(h * s), int(w * s)) and stacked with its mirror; the segmentation logits resized by nearest
  to that size, softmax, resized by nearest to the scale-1.0 size; the mirror's result mirrored
  back; the mean over the 8 passes; the foreground channels each divided by (max + 1e-5); the
  image's classes kept;
- pseudo masks (convert_seed_to_pseudo_masks.py, core/refinements/densecrf.py, bg_gamma 2):
  background (1 - max)^2 in front, pydensecrf's unary_from_softmax, Gaussian (sxy 1, compat 3)
  and bilateral (sxy 67, srgb 3, compat 4) kernels, 10 iterations, on the normalised image
  de-normalised back to uint8 by truncation; argmax mapped to the class keys;
- multi-stage predictions (infer_seg.py; DeepLabv3_Plus.forward_with_scales with bilinear
  interpolation): the same passes with bilinear resizes; every label whose mean softmax reaches
  0.05 somewhere is kept (background included) and the CRF runs on those channels as they are;
  fewer than two kept labels give an all-background mask.
Ours runs the functions our seeds / crf / predict stages run (infer.step_from_config,
infer.run_split, the stages' seed storage and CRF items, crf.crf_label_map) on the same weights,
imported through models.weights, with the images padded into one bucket. Images have odd sizes
(375 x 500, 319 x 500): scale 0.5 floors, the decoder resizes ceil(h / 16) cells onto ceil(h / 4).
Two weight sets each: random, and one whose last layer is fitted to object masks (confident,
object-shaped seeds, where interpolation details move boundaries).
"""

import functools

import jax
import numpy as np
import pytest

torch = pytest.importorskip('torch')

from pydensecrf import densecrf as dcrf
from pydensecrf import utils as crf_utils
from torch.nn import functional as F

from bench import fitted_seeds
from data_pipeline import splits
from recurseed_jax import crf
from recurseed_jax import infer
from recurseed_jax import models
from recurseed_jax.models import weights
from recurseed_jax.stages import crf as crf_stage
import reference
import torch_reference as tr

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures('one_torch_thread')]

C = 4
SIZES = ((375, 500), (319, 500))
BUCKET = (384, 512)
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
SCALES = (1.0, 0.5, 1.5, 2.0)
NET = dict(layers=(1, 1, 1, 1), width=8, feature_size=32)  # small: the recipe, not the size
AGREEMENT = 0.999  # the share of identical mask pixels required (issue: >= 99.9 %)
FITTED_LOGIT = 6.0  # fitted last layer: object pixels get logits of about +-this


# --- data: photo-like images with objects ------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _scenes():
  """Images (uint8, odd sizes) with 2-3 textured objects each, their class maps and labels."""
  return fitted_seeds.scenes(SIZES, C)


def _normalised(image):
  """The authors' Normalize: float32 (x / 255 - mean) / std per channel, CHW."""
  x = image.astype(np.float32)
  out = np.empty_like(x)
  for c in range(3):
    out[..., c] = (x[..., c] / 255.0 - MEAN[c]) / STD[c]
  return out.transpose(2, 0, 1)


def _denormalised(chw):
  """The authors' Denormalize: HWC float64 (x * std + mean) * 255, astype(uint8)."""
  return (((chw.transpose(1, 2, 0) * np.asarray(STD)) + np.asarray(MEAN)) * 255).astype(np.uint8)


# --- the authors' recipe, re-derived in torch ---------------------------------------------------
def _resize(x, size, mode):
  """torch_utils.resize: F.interpolate only when the size changes (align_corners=False)."""
  if tuple(x.shape[-2:]) == tuple(size):
    return x
  return F.interpolate(x, size, mode=mode, **({} if mode == 'nearest' else
                                              {'align_corners': False}))


@torch.no_grad()
def _their_mean_softmax(net, image, mode):
  """forward_with_scales with hflip and same=True: mean softmax [C + 1, h, w] and class probs."""
  x = torch.from_numpy(_normalised(image))[None]
  h, w = image.shape[:2]
  passes, class_probs = [], []
  for s in SCALES:
    size = (int(h * s), int(w * s))
    xs = _resize(x, size, 'bilinear')
    xs = torch.cat([xs, xs.flip(-1)])
    out = net(xs)
    probs = torch.softmax(_resize(out['seg'], size, mode), dim=1)
    probs = _resize(probs, (h, w), mode)
    passes += [probs[0], probs[1].flip(-1)]
    if 'logits' in out:
      class_probs += list(torch.sigmoid(out['logits']))
  mean = torch.stack(passes).mean(0)
  return mean.numpy(), (torch.stack(class_probs).mean(0).numpy() if class_probs else None)


def _their_crf(image, probmap, keys):
  """densecrf.DenseCRF (deeplab parameters) on the de-normalised image; argmax -> keys."""
  if len(keys) <= 1:
    return np.zeros(image.shape[:2], np.uint8)
  rgb = np.ascontiguousarray(_denormalised(_normalised(image)))
  n, h, w = probmap.shape
  d = dcrf.DenseCRF2D(w, h, n)
  d.setUnaryEnergy(np.ascontiguousarray(crf_utils.unary_from_softmax(probmap)))
  d.addPairwiseGaussian(sxy=1, compat=3)
  d.addPairwiseBilateral(sxy=67, srgb=3, rgbim=rgb, compat=4)
  q = np.array(d.inference(10)).reshape((n, h, w))
  return np.asarray(keys)[np.argmax(q, axis=0)].astype(np.uint8)


def _their_pseudo_mask(net, image, label):
  """infer_rsepm.py then convert_seed_to_pseudo_masks.py for one training image."""
  mean, class_prob = _their_mean_softmax(net, image, 'nearest')
  fg = mean[1:]
  seed = fg / (fg.reshape(C, -1).max(axis=1)[:, None, None] + 1e-5)
  kept = seed[label == 1]
  keys = np.pad(np.flatnonzero(label) + 1, (1, 0))
  bg = np.power(1 - np.max(kept, axis=0, keepdims=True), 2.0)
  return kept, _their_crf(image, np.concatenate([bg, kept]), keys), class_prob


def _their_prediction(net, image):
  """infer_seg.py then the CRF script with an 'MS' tag (no background added)."""
  mean, _ = _their_mean_softmax(net, image, 'bilinear')
  keep = mean.reshape(C + 1, -1).max(axis=1) >= 0.05
  return mean, _their_crf(image, mean[keep], np.flatnonzero(keep))


# --- networks ----------------------------------------------------------------------------------
def _fit_last_layer(net, conv):
  """Sets `conv` (the last 3x3 conv) to a least-squares 1x1 map from its input features to
  object logits of the scenes: confident, object-shaped outputs from random features."""
  images, maps, _ = _scenes()
  feats, targets = [], []
  hook = conv.register_forward_hook(lambda m, i, o: feats.append(i[0]))
  with torch.no_grad():
    for image, cls in zip(images, maps):
      net(torch.from_numpy(_normalised(image))[None])
      h4, w4 = feats[-1].shape[-2:]
      small = cls[::4, ::4][:h4, :w4]  # the class at each stride-4 cell
      targets.append(np.eye(C + 1)[small].reshape(-1, C + 1) * 2 * FITTED_LOGIT - FITTED_LOGIT)
  hook.remove()
  x = torch.cat([f[0].flatten(1).T for f in feats]).double()  # [pixels, D]
  y = torch.from_numpy(np.concatenate(targets))
  sol = torch.linalg.lstsq(x, y).solution.float()  # [D, C + 1]; the conv has no bias
  with torch.no_grad():
    conv.weight.zero_()
    conv.weight[:, :, 1, 1] = sol.T  # the centre tap: a 1x1 map inside the 3x3 conv
  return net


@functools.lru_cache(maxsize=None)
def _rsepm(fitted):
  net = tr.randomize_(tr.TorchRecurSeedNet(C, NET['layers'], 16, NET['feature_size'],
                                           low_channels=NET['feature_size'], width=NET['width']),
                      seed=11)
  return _fit_last_layer(net, net.decoder.classifier[4]) if fitted else net


@functools.lru_cache(maxsize=None)
def _deeplab(fitted):
  net = tr.randomize_(tr.TorchDeepLabV3Plus(C, NET['layers'], 8, NET['feature_size'],
                                            low_channels=16, width=NET['width']), seed=12)
  return _fit_last_layer(net, net.decoder.classifier[4]) if fitted else net


def _config(**overrides):
  return reference.default_config(**{
      'model.stage_sizes': NET['layers'], 'model.width': NET['width'],
      'model.aspp_channels': NET['feature_size'], 'model.decoder_channels': NET['feature_size'],
      'model.dilation_scheme': 'authors', 'data.mean': MEAN, 'data.std': STD,
      'infer.scales': SCALES, 'infer.flip': True, 'infer.buckets': (BUCKET,),
      'infer.batch_size': 2, **overrides})


def _ours(torch_net, model, kind):
  like = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype),
                      jax.eval_shape(model.init, jax.random.key(0), np.zeros((1, 64, 64, 3))))
  variables, _ = weights.import_state_dict(kind, tr.state_dict_numpy(torch_net), like)
  return variables


def _split():
  images, maps, labels = _scenes()
  return splits.ArraySplit(['a', 'b'], images, labels, masks=maps)


# --- the comparisons ---------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _seed_step():
  cfg = _config(**{'model.output_stride': 16, 'model.aspp_rates': (6, 12, 18),
                   'model.low_level_channels': NET['feature_size']})
  model = models.build_model(cfg.model, C)
  return cfg, model, infer.step_from_config(cfg, model, num_kept=3)


def _ours_on_scenes(cfg, step, torch_net, model, kind, with_labels):
  """[(split, index, image, products)] of our inference of the scenes, as the stages run it."""
  variables = _ours(torch_net, model, kind)
  split = _split()
  return [(split, i, image, out['m']) for i, image, out in infer.run_split(
      step, {'m': variables}, split, range(len(split)), cfg.infer.buckets, 2,
      with_labels=with_labels)]


def _assert_masks_agree(pairs):
  """>= AGREEMENT of the pixels of (ours, theirs) mask pairs are the same label."""
  same = sum(int((ours == theirs).sum()) for ours, theirs in pairs)
  total = sum(ours.size for ours, _ in pairs)
  assert same / total >= AGREEMENT, f'{100 * same / total:.3f} % identical pixels'


@pytest.mark.parametrize('fitted', [False, True], ids=['random', 'fitted'])
def test_seeds_and_pseudo_masks_match_the_authors(fitted):
  cfg, model, step = _seed_step()
  assert cfg.infer.interpolation == 'nearest' and cfg.crf.image == 'denormalized'  # defaults
  net = _rsepm(fitted)
  params = crf.crf_params_from_config(cfg.crf)
  pairs = []
  for split, i, image, res in _ours_on_scenes(cfg, step, net, model, 'rsepm', True):
    theirs_seed, theirs_mask, theirs_prob = _their_pseudo_mask(net, image, split.labels[i])
    np.testing.assert_array_equal(res['classes'], np.flatnonzero(split.labels[i]))
    # Seeds: the same values at float32 precision (they lie in [0, 1]).
    np.testing.assert_allclose(res['seg'], theirs_seed.transpose(1, 2, 0), rtol=0, atol=2e-5)
    np.testing.assert_allclose(res['class_prob'], theirs_prob, rtol=1e-4)
    # Pseudo masks the way the stages make them: stored seed, CRF item, CRF.
    stored = infer.encode_seed(res['seg'], cfg.infer.seed_dtype)
    _, crf_image, probs, labels = crf_stage.seed_item(cfg, split.ids[i], image, stored,
                                                      res['classes'].astype(np.uint8))
    np.testing.assert_array_equal(crf_image, _denormalised(_normalised(image)))
    pairs.append((crf.crf_label_map(crf_image, probs, labels, **params), theirs_mask))
    if fitted:  # the seeds have structure: the masks follow the objects
      assert (theirs_mask == split.mask(i)).mean() > 0.8
  _assert_masks_agree(pairs)


@functools.lru_cache(maxsize=None)
def _segmenter_step():
  cfg = _config(**{'model.output_stride': 8, 'model.aspp_rates': (12, 24, 36),
                   'model.low_level_channels': 16, 'infer.interpolation': 'bilinear',
                   'infer.class_threshold': 0.05, 'seg.max_classes': C + 1})
  model = models.build_deeplab(cfg.model, C, head='v3plus')
  return cfg, model, infer.step_from_config(cfg, model, segmenter=True)


@pytest.mark.parametrize('fitted', [False, True], ids=['random', 'fitted'])
def test_segmenter_predictions_match_the_authors(fitted):
  cfg, model, step = _segmenter_step()
  net = _deeplab(fitted)
  params = crf.crf_params_from_config(cfg.crf)
  pairs = []
  for _, _, image, res in _ours_on_scenes(cfg, step, net, model, 'deeplab', False):
    mean, theirs_mask = _their_prediction(net, image)
    kept = np.flatnonzero(mean.reshape(C + 1, -1).max(axis=1) >= 0.05)
    np.testing.assert_array_equal(np.sort(res['channels']), kept)
    order = np.argsort(res['channels'])
    np.testing.assert_allclose(res['probs'][..., order], mean[kept].transpose(1, 2, 0), rtol=0,
                               atol=2e-5)
    mask = crf.crf_label_map(crf.crf_image(image, cfg.crf.image, MEAN, STD), res['probs'],
                             res['channels'], **params)
    pairs.append((mask, theirs_mask))
  _assert_masks_agree(pairs)
