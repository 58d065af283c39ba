"""The paths a dataset reader needs, checked before any work: the root folder, every listed file.

A missing folder or file found a stage later (or a day into training) costs a run; found here, it
is one error naming config.data.root or the first missing path, the count, and the known layouts.
"""

import os


def check_root(root, dataset, layouts):
  """config.data.root as an absolute folder, or an error naming it and the known layouts."""
  known = '; '.join(layouts.values())
  if not root:
    raise FileNotFoundError(f'config.data.root is empty: set it to the folder holding {dataset}. '
                            f'Known layouts: {known}.')
  root = os.path.abspath(os.path.expanduser(root))
  if not os.path.isdir(root):
    raise FileNotFoundError(f'config.data.root={root} does not exist. Known layouts: {known}.')
  return root


def check_exist(paths, where):
  """FileNotFoundError naming the first missing file and how many of `where`'s are missing."""
  missing = [p for p in paths if not os.path.exists(p)]
  if missing:
    raise FileNotFoundError(f'{len(missing)} of the {len(paths)} files of {where} are missing, '
                            f'first {missing[0]}')
