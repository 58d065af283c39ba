"""Command-line entry points: a user error ends in one line naming what is wrong, exit status 2.

Every CLI (launch.py, `python -m recurseed_jax.evaluate`, `convert_weights`,
`python -m data_pipeline.coco_prepare`, the benches) runs its main through `run`: a ValueError
(bad config, bad file content: each message names the key or the file) or an OSError (a missing
or unreadable file, a full disk: the message carries the path) prints `error: <message>` on
stderr and exits with status 2 instead of a traceback. RECURSEED_TRACEBACK=1 re-raises, for bug
reports.
"""

import os
import sys

USER_ERRORS = (ValueError, OSError)
EXIT_USAGE = 2


def fail(message):
  """Prints `error: message` on stderr and exits with status 2."""
  print(f'error: {message}', file=sys.stderr)
  sys.exit(EXIT_USAGE)


def describe(error):
  """One line for an exception: its message, with the path for OSErrors that carry one."""
  if isinstance(error, OSError) and error.filename and str(error.filename) not in str(error):
    return f'{error.strerror or error}: {error.filename}'
  text = str(error).strip() or type(error).__name__
  return ' '.join(text.split('\n'))


def run(main, argv=None):
  """Calls main(argv); user errors end the process in one line (see the module docstring)."""
  try:
    return main(argv)
  except USER_ERRORS as e:
    if os.environ.get('RECURSEED_TRACEBACK'):
      raise
    fail(describe(e))


def parse_hw(text, flag='--size'):
  """'375x500' -> (375, 500); a ValueError naming the flag otherwise."""
  parts = str(text).lower().split('x')
  try:
    hw = tuple(int(v) for v in parts)
  except ValueError:
    hw = ()
  if len(hw) != 2 or min(hw) <= 0:
    raise ValueError(f'{flag} must be HEIGHTxWIDTH in pixels, e.g. 375x500; got {text!r}')
  return hw
