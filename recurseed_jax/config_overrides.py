"""Configs derived from a config by overriding some of its fields (the segmenter, ablations)."""


def override(config, fields, where):
  """Sets `fields` (a nested mapping, e.g. {'mix': {'kind': 'none'}}) into `config` in place.

  Every key must already exist in `config` (a typo is an error naming `where` and the key, not a
  silently new field); a mapping over a section recurses into it.
  """
  for key, value in fields.items():
    if key not in config:
      raise ValueError(f'{where}.{key}: the config has no field {key!r} to override')
    if hasattr(value, 'items') and hasattr(config[key], 'items'):
      override(config[key], value, f'{where}.{key}')
    else:
      config[key] = value


def derive(config, fields, where):
  """A resolved, unlocked copy of `config` with `fields` overridden (see `override`)."""
  c = config.copy_and_resolve_references()
  with c.unlocked():
    override(c, fields, where)
  return c
