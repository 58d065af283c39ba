"""Everything tf.data and on disk: dataset readers, TFDS builders, augmentation, batching.

The stages see a dataset through providers.py (interfaces.py's Protocols). registry.py (dataset
names, class counts, sources), splits.py and interfaces.py import no tensorflow (checked by
tests/test_imports.py), so recurseed_jax, which must never import it, may import them;
providers.py, pipeline.py, augment.py, records.py and tfds_builders.py do import it.
"""
