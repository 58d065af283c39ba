"""Image ids of a split: the file stems of a folder, or the lines of a VOC-style list file.

The readers (data_pipeline/voc.py, coco.py) name every image by its id, the file name less its
extension, so ids from a folder and from a list file must agree byte for byte.
"""

import os

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png')


def stems(folder, extensions=IMAGE_EXTENSIONS):
  """{stem: file name} of the image files in a folder."""
  out = {}
  for name in os.listdir(folder):
    stem, ext = os.path.splitext(name)
    if ext.lower() in extensions and not name.startswith('.'):
      out[stem] = name
  return out


def read_id_list(path):
  """Image ids of a list file; a line is `id` or `/JPEGImages/id.jpg /SegmentationClassAug/id.png`.

  An id may hold spaces (the line less its folders and image extension is the id) and bytes that
  are not UTF-8 (read as os.listdir reads such names, so the two agree).
  """
  ids = []
  with open(path, encoding='utf-8', errors='surrogateescape') as f:
    for line in f:
      line = line.strip()
      if line:
        stem, ext = os.path.splitext(os.path.basename(line))
        ids.append(stem if ext.lower() in IMAGE_EXTENSIONS else os.path.basename(line))
  return ids
