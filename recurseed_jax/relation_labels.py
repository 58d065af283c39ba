"""Relation labels for the boundary network: confident foreground / background from a seed (IRN).

Host-side numpy + pydensecrf. Reproduces IRN's step/cam_to_ir_label.py (jiwoon-ahn/irn) for one
image, with misc/imutils.py's `crf_inference_label`, and the x0.25 nearest reduction of the
label map that voc12/dataloader.py's `VOC12AffinityDataset` applies before extracting pairs.

For scores s [H, W, K] of the K kept classes (each max-normalised; IRN's `high_res` CAMs):
  fg = CRF(argmax([conf_fg, s_1, ..., s_K]))   (channel 0: a constant background score)
  bg = CRF(argmax([conf_bg, s_1, ..., s_K]))
where CRF is a label CRF: unary from the hard labels (pydensecrf.utils.unary_from_labels,
gt_prob 0.7, zero_unsure=False: label 0 is the background label, not "unsure"), a Gaussian
kernel (sxy 3, compat 3) and a bilateral one (sxy 50, srgb 5, compat 10) on the uint8 image,
10 mean-field iterations, argmax. Both maps go to dataset labels (0 background, class + 1), and
  relation label = fg where fg is a class, 0 where both are background, 255 elsewhere
(a pixel the low threshold calls foreground but the high one does not is left unknown).
IRN's arithmetic `bg + fg == 0` is the same test as `bg == 0 and fg == 0` on non-negative
labels. Nothing differs from IRN except that an image without kept classes (which IRN never
meets) is all background without running a CRF.
"""

import numpy as np
import pydensecrf.densecrf as dcrf
from pydensecrf.utils import unary_from_labels

IGNORE = 255
LABEL_CRF_DEFAULTS = dict(iterations=10, gt_prob=0.7, pos_xy_std=3.0, pos_weight=3.0,
                          bi_xy_std=50.0, bi_rgb_std=5.0, bi_weight=10.0)


def label_crf(image, labels, num_labels, *, iterations=10, gt_prob=0.7, pos_xy_std=3.0,
              pos_weight=3.0, bi_xy_std=50.0, bi_rgb_std=5.0, bi_weight=10.0):
  """IRN's crf_inference_label: a DenseCRF over hard labels; returns int [H, W] in 0..L-1.

  Args:
    image: uint8 [H, W, 3] RGB image.
    labels: int [H, W] labels in 0..num_labels-1.
    num_labels: L >= 2.
    iterations, gt_prob, pos_*, bi_*: IRN's values by default (see the module docstring).
  """
  h, w = labels.shape
  if num_labels < 2:
    raise ValueError(f'num_labels must be >= 2 for a label CRF, got {num_labels}')
  crf = dcrf.DenseCRF2D(w, h, num_labels)
  crf.setUnaryEnergy(unary_from_labels(labels, num_labels, gt_prob=gt_prob, zero_unsure=False))
  crf.addPairwiseGaussian(sxy=float(pos_xy_std), compat=float(pos_weight))
  crf.addPairwiseBilateral(sxy=float(bi_xy_std), srgb=float(bi_rgb_std),
                           rgbim=np.ascontiguousarray(image), compat=float(bi_weight))
  q = np.asarray(crf.inference(int(iterations)))
  return np.argmax(q.reshape(num_labels, h, w), axis=0)


def _check(image, scores, classes):
  image = np.asarray(image)
  scores = np.asarray(scores, np.float32)
  classes = np.asarray(classes, np.int64).reshape(-1)
  if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
    raise ValueError(f'image must be uint8 [H, W, 3], got {image.dtype} {image.shape}')
  if scores.ndim != 3 or scores.shape[:2] != image.shape[:2]:
    raise ValueError(f'scores must be [H, W, K] matching the image {image.shape[:2]}, got '
                     f'{scores.shape}')
  if scores.shape[2] != classes.size:
    raise ValueError(f'scores have {scores.shape[2]} channels but {classes.size} classes were '
                     'given (one class index per channel)')
  if classes.size and (classes.min() < 0 or classes.max() > 253):
    raise ValueError(f'classes must be 0-based class indices in 0..253, got {classes.tolist()}')
  if not np.all(np.isfinite(scores)):
    raise ValueError('scores contain NaN or inf')
  return image, scores, classes


def relation_label_map(image, scores, classes, *, conf_fg=0.30, conf_bg=0.05, **crf_params):
  """IRN's cam_to_ir_label for one image.

  Args:
    image: uint8 [H, W, 3] RGB image.
    scores: float [H, W, K] max-normalised scores of the kept classes (e.g. a stored seed,
      dequantised).
    classes: K 0-based class indices of the score channels.
    conf_fg: background score of the confident-foreground map (IRN's conf_fg_thres 0.30).
    conf_bg: background score of the confident-background map (IRN's conf_bg_thres 0.05).
    **crf_params: `label_crf` keywords (IRN's values by default).

  Returns:
    uint8 [H, W]: 0 background, c + 1 class c, 255 unknown.
  """
  image, scores, classes = _check(image, scores, classes)
  if not conf_bg <= conf_fg:
    raise ValueError(f'conf_bg ({conf_bg}) must not exceed conf_fg ({conf_fg})')
  if classes.size == 0:
    return np.zeros(image.shape[:2], np.uint8)
  lut = np.concatenate([[0], classes + 1])

  def confident(threshold):
    padded = np.concatenate([np.full(scores.shape[:2] + (1,), threshold, np.float32), scores],
                            axis=2)
    return lut[label_crf(image, np.argmax(padded, axis=2), classes.size + 1, **crf_params)]

  fg, bg = confident(conf_fg), confident(conf_bg)
  out = np.where(fg == 0, IGNORE, fg)
  out[(fg == 0) & (bg == 0)] = 0
  return out.astype(np.uint8)
