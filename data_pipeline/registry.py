"""The datasets and data sources this project reads, by the names a config uses for them.

Kept free of tensorflow (and of any reader) so that recurseed_jax's config validation can check
config.data.name, config.data.num_classes and config.data.source before anything is loaded;
data_pipeline/providers.py picks its reader from the same names.
"""

# config.data.name -> its number of classes (no background); None: set by config.data.num_classes.
DATASETS = {'synthetic': None, 'voc12': 20, 'coco14': 80}

# config.data.source: 'files' reads the folders as they are, 'tfds' the records of a TFDS builder
# (data_pipeline/tfds_builders.py), written once.
SOURCES = ('files', 'tfds')
