"""Seed refinement: SCG (self-correlation) and PAMR (pixel-adaptive).

Both run on seeds under stop-gradient, are pure and jit with static shapes.

SCG reproduces the authors' `SCG` (shjo-april/RecurSeed_and_EdgePredictMix, core/inferences.py
at commit 4fbc05c; METHOD.md section 2). "Column-normalise" divides each column by its sum
(+ eps). Per image, per feature level f (HW x D):
  n  = f / (|f| + eps) per pixel;
  S  = relu(n n^T), entries < first_th set to 0;   S1 = column-normalise(S);
  B  = column-normalise(S with a zero diagonal);   S2 = B, then `iteration` times
       S2 = column-normalise(S2 @ B)  (iteration 1: B^2, 2: B^3);
  entries of S2 < second_th / HW set to 0;
  H_level = column-normalise(max(S1, second_weight * S2)).
H = sum of H_level over levels; Hn = H with every column min-max normalised over its rows. For
class c with seed map m_c (flattened):
  F_c = minmax(Hn @ [m_c >= fg_th]), B_c = minmax(Hn @ [m_c <= bg_th]),
  refined_c = minmax(relu(F_c - B_c)),
with minmax(v) = (v - min v) / (max v - min v + eps) over pixels. An empty pixel set gives a zero
product, hence zeros. eps is the authors' 1e-10 everywhere: every division it guards has a
non-negative numerator no larger than its denominator's sum or range (ratios stay in [0, 1]), and
1e-10 is a normal float32, so 0 / eps = 0 and nothing can overflow or become NaN.

PAMR follows Araslanov & Roth (CVPR 2020) and their released code: edge
replicated 3x3 dilated neighbourhoods; the colour scale is the unbiased
(ddof=1) std over the 9 * len(dilations) neighbourhood values (centre
included, once per dilation), per colour channel; affinities are averaged over
colour channels and soft-maxed over the 8 * len(dilations) neighbours.
"""

import jax
import jax.numpy as jnp

_HIGHEST = jax.lax.Precision.HIGHEST
SCG_EPS = 1e-10  # the authors' value; safe (see the module docstring)
REFINE_KINDS = ('scg', 'pamr', 'none')


def _mm(a, b):
  # Full float32 matmuls: TF32 on GPUs would move values across thresholds.
  return jnp.matmul(a, b, precision=_HIGHEST)


def _minmax(v, axis, eps):
  """Min-max normalisation along `axis`: (v - min) / (max - min + eps); 0 for constants."""
  lo = jnp.min(v, axis=axis, keepdims=True)
  hi = jnp.max(v, axis=axis, keepdims=True)
  return (v - lo) / (hi - lo + eps)


def _column_normalise(a, eps):
  return a / (jnp.sum(a, axis=0, keepdims=True) + eps)


def _level_affinity(f, first_th, second_th, iteration, second_weight, eps):
  """One level's column-normalised max(S1, w2 * S2) for one image; f is [HW, D]."""
  hw = f.shape[0]
  n = f / (jnp.linalg.norm(f, axis=-1, keepdims=True) + eps)
  s = jax.nn.relu(_mm(n, n.T))
  s = jnp.where(s < first_th, 0.0, s)
  s1 = _column_normalise(s, eps)
  base = _column_normalise(s * (1.0 - jnp.eye(hw, dtype=s.dtype)), eps)
  s2 = base
  for _ in range(iteration):  # `iteration` is static: unrolled.
    s2 = _column_normalise(_mm(s2, base), eps)
  s2 = jnp.where(s2 < second_th / hw, 0.0, s2)
  return _column_normalise(jnp.maximum(s1, second_weight * s2), eps)


def _scg_one(feats, seed, first_th, second_th, fg_th, bg_th, iteration,
             second_weight, eps):
  """SCG for one image: feats list of [h, w, D_l], seed [h, w, C]."""
  h, w, c = seed.shape
  aff = sum(
      _level_affinity(f.reshape(h * w, -1), first_th, second_th, iteration,
                      second_weight, eps) for f in feats)
  aff = _minmax(aff, axis=0, eps=eps)  # Each column over its rows.
  m = seed.reshape(h * w, c)
  fg = _minmax(_mm(aff, (m >= fg_th).astype(aff.dtype)), axis=0, eps=eps)
  bg = _minmax(_mm(aff, (m <= bg_th).astype(aff.dtype)), axis=0, eps=eps)
  return _minmax(jax.nn.relu(fg - bg), axis=0, eps=eps).reshape(h, w, c)


def scg(features, seed, *, first_th=0.5, second_th=0.1, fg_th=0.3, bg_th=0.05,
        iteration=1, second_weight=1.0, eps=SCG_EPS):
  """Self-Correlation Generation refinement of a seed (see module docstring).

  Args:
    features: list of [B, h, w, D_l] feature maps at the seed's resolution (a
      single array is taken as a one-level list).
    seed: [B, h, w, C] seed in [0, 1].
    first_th, second_th, fg_th, bg_th, iteration, second_weight: SCG knobs
      (config rs.scg.*); the defaults are the authors'.
    eps: the normalisations' guard (the authors' 1e-10).

  Returns:
    [B, h, w, C] refined seed in [0, 1]; never NaN.
  """
  if not isinstance(features, (list, tuple)):
    features = [features]
  feats = [jax.lax.stop_gradient(f).astype(jnp.float32) for f in features]
  seed = jax.lax.stop_gradient(seed).astype(jnp.float32)
  for f in feats:
    if f.shape[:3] != seed.shape[:3]:
      raise ValueError(f'SCG features {f.shape} must match the seed '
                       f'{seed.shape} in batch and spatial size.')
  fn = lambda fs, s: _scg_one(fs, s, first_th, second_th, fg_th, bg_th,
                              iteration, second_weight, eps)
  return jax.vmap(fn)(feats, seed)


def _neighbours(x, dilations, centre):
  """[B, H, W, K] -> [B, H, W, K, P]: 3x3 dilated neighbours, edge padded."""
  _, hh, ww, _ = x.shape
  out = []
  for d in dilations:
    xp = jnp.pad(x, ((0, 0), (d, d), (d, d), (0, 0)), mode='edge')
    for dy in (-1, 0, 1):
      for dx in (-1, 0, 1):
        if dy == 0 and dx == 0 and not centre:
          continue
        y0, x0 = d + dy * d, d + dx * d
        out.append(xp[:, y0:y0 + hh, x0:x0 + ww, :])
  return jnp.stack(out, axis=-1)


def pamr(image, seed, *, iterations=10, dilations=(1, 2, 4, 8, 12, 24)):
  """Pixel-Adaptive Mask Refinement (Araslanov & Roth, CVPR 2020).

  Args:
    image: [B, H, W, 3] image, any normalisation.
    seed: [B, H, W, C] seed at image resolution.
    iterations: propagation steps.
    dilations: dilations of the 3x3 neighbourhoods.

  Returns:
    [B, H, W, C] refined seed.
  """
  image = jax.lax.stop_gradient(image).astype(jnp.float32)
  seed = jax.lax.stop_gradient(seed).astype(jnp.float32)
  if image.shape[:3] != seed.shape[:3]:
    raise ValueError(f'PAMR image {image.shape} and seed {seed.shape} must '
                     'share batch and spatial size.')
  dilations = tuple(int(d) for d in dilations)
  std = jnp.std(_neighbours(image, dilations, centre=True), axis=-1,
                keepdims=True, ddof=1)
  diff = jnp.abs(image[..., None] - _neighbours(image, dilations, False))
  aff = jnp.mean(-diff / (1e-8 + 0.1 * std), axis=3)  # Over colours.
  aff = jax.nn.softmax(aff, axis=-1)[:, :, :, None, :]  # [B, H, W, 1, P]

  def body(_, m):
    return jnp.sum(_neighbours(m, dilations, False) * aff, axis=-1)

  return jax.lax.fori_loop(0, iterations, body, seed)


def refine_seed(kind, seed, *, features=None, image=None, scg_kwargs=None,
                pamr_kwargs=None):
  """Dispatches seed refinement on `kind` ('scg' | 'pamr' | 'none').

  Args:
    kind: config rs.refine.
    seed: [B, h, w, C] seed.
    features: SCG feature maps (see `scg`); needed for 'scg'.
    image: [B, H, W, 3] image at the seed's resolution; needed for 'pamr'.
    scg_kwargs: e.g. dict(config.rs.scg); its 'levels' entry (which backbone
      stages give `features`) is the caller's business and is dropped here.
    pamr_kwargs: e.g. dict(config.rs.pamr).

  Returns:
    The refined seed, same shape as `seed`.
  """
  if kind == 'scg':
    if features is None:
      raise ValueError("refine_seed('scg') needs `features`.")
    kwargs = {k: v for k, v in dict(scg_kwargs or {}).items() if k != 'levels'}
    return scg(features, seed, **kwargs)
  if kind == 'pamr':
    if image is None:
      raise ValueError("refine_seed('pamr') needs `image`.")
    return pamr(image, seed, **dict(pamr_kwargs or {}))
  if kind == 'none':
    return seed
  raise ValueError(f'Unknown seed refinement {kind!r}; allowed: '
                   f'{", ".join(map(repr, REFINE_KINDS))}.')
