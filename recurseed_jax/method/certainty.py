"""Seeds to hard label maps (METHOD.md section 2, certainty filter).

Hard maps are int32 [B, H, W]: 0 = background, c + 1 = class c, 255 = ignore.
"""

import jax.numpy as jnp

IGNORE = 255


def hard_labels(seed, certain=0.55, uncertain=0.10, valid=None):
  """Certainty filter: confident pixels get a class, unsure ones are ignored.

  Args:
    seed: [B, H, W, C] foreground scores in [0, 1].
    certain: best score >= certain -> that class (checked first).
    uncertain: best score <= uncertain -> background.
    valid: optional bool [B, H, W]; False pixels (crop padding) -> 255.

  Returns:
    int32 [B, H, W]; scores strictly between the thresholds give 255.
  """
  best = jnp.max(seed, axis=-1)
  arg = jnp.argmax(seed, axis=-1).astype(jnp.int32)
  out = jnp.where(best >= certain, arg + 1,
                  jnp.where(best <= uncertain, 0, IGNORE)).astype(jnp.int32)
  if valid is not None:
    out = jnp.where(valid, out, IGNORE)
  return out


def argmax_labels(seed, valid=None):
  """Unfiltered hard map (for ClassMix): argmax over [1 - max, classes].

  Args:
    seed: [B, H, W, C] foreground scores in [0, 1].
    valid: optional bool [B, H, W]; False pixels -> 255.

  Returns:
    int32 [B, H, W]; ties between background and a class go to background.
  """
  bg = 1.0 - jnp.max(seed, axis=-1, keepdims=True)
  out = jnp.argmax(jnp.concatenate([bg, seed], axis=-1), axis=-1)
  out = out.astype(jnp.int32)
  if valid is not None:
    out = jnp.where(valid, out, IGNORE)
  return out
