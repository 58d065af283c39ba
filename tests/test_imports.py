"""recurseed_jax never imports tensorflow, nor do the parts of data_pipeline it may import."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_SCRIPT = r"""
import importlib, json, pkgutil, sys
import recurseed_jax
names = ['recurseed_jax']
for info in pkgutil.walk_packages(recurseed_jax.__path__, 'recurseed_jax.'):
  importlib.import_module(info.name)
  names.append(info.name)
print(json.dumps(dict(modules=names, tensorflow='tensorflow' in sys.modules)))
"""


def test_package_imports_without_tensorflow():
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
  r = subprocess.run([sys.executable, '-c', _SCRIPT], cwd=ROOT, env=env, capture_output=True,
                     text=True, timeout=120)
  assert r.returncode == 0, r.stderr[-3000:]
  result = json.loads(r.stdout.strip().splitlines()[-1])
  modules = set(result['modules'])
  for name in ('recurseed_jax.train', 'recurseed_jax.infer', 'recurseed_jax.stages',
               'recurseed_jax.checkpoint', 'recurseed_jax.validate', 'recurseed_jax.method.refine',
               'recurseed_jax.models.resnet'):
    assert name in modules, name
  assert not result['tensorflow'], 'importing recurseed_jax pulled in tensorflow'


# What recurseed_jax may import of data_pipeline: the names, the split class, the interfaces.
_DATA_SCRIPT = r"""
import json, sys
import data_pipeline, data_pipeline.interfaces, data_pipeline.registry, data_pipeline.splits
print(json.dumps(dict(tensorflow='tensorflow' in sys.modules)))
"""


def test_data_registry_splits_and_interfaces_import_without_tensorflow():
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
  r = subprocess.run([sys.executable, '-c', _DATA_SCRIPT], cwd=ROOT, env=env, capture_output=True,
                     text=True, timeout=120)
  assert r.returncode == 0, r.stderr[-3000:]
  result = json.loads(r.stdout.strip().splitlines()[-1])
  assert not result['tensorflow'], ('importing data_pipeline.registry / splits / interfaces '
                                    'pulled in tensorflow')
