"""Imports: recurseed_jax never imports tensorflow (nor do the parts of data_pipeline it may
import), and the project's modules import each other without a cycle."""

import ast
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


def _run(script):
  """The JSON a script prints last, run in a fresh interpreter (nothing imported before)."""
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
  r = subprocess.run([sys.executable, '-c', script], cwd=ROOT, env=env, capture_output=True,
                     text=True, timeout=120)
  assert r.returncode == 0, r.stderr[-3000:]
  return json.loads(r.stdout.strip().splitlines()[-1])


def test_package_imports_without_tensorflow():
  result = _run(_SCRIPT)
  modules = set(result['modules'])
  for name in ('recurseed_jax.train', 'recurseed_jax.infer', 'recurseed_jax.stages',
               'recurseed_jax.checkpoint', 'recurseed_jax.config_lib',
               'recurseed_jax.method.refine', 'recurseed_jax.models.resnet'):
    assert name in modules, name
  assert not result['tensorflow'], 'importing recurseed_jax pulled in tensorflow'


# What recurseed_jax may import of data_pipeline: the names, the split class, the interfaces.
_DATA_SCRIPT = r"""
import json, sys
import data_pipeline, data_pipeline.interfaces, data_pipeline.registry, data_pipeline.splits
print(json.dumps(dict(tensorflow='tensorflow' in sys.modules)))
"""


def test_data_registry_splits_and_interfaces_import_without_tensorflow():
  result = _run(_DATA_SCRIPT)
  assert not result['tensorflow'], ('importing data_pipeline.registry / splits / interfaces '
                                    'pulled in tensorflow')


# --- the module graph --------------------------------------------------------------------------
PACKAGES = ('recurseed_jax', 'data_pipeline', 'configs')


def _project_modules():
  """{module name: path} of every module of the project's packages, and launch.py."""
  out = {'launch': os.path.join(ROOT, 'launch.py')}
  for package in PACKAGES:
    for folder, _, files in os.walk(os.path.join(ROOT, package)):
      for name in files:
        if name.endswith('.py'):
          rel = os.path.relpath(os.path.join(folder, name), ROOT)[:-3].split(os.sep)
          if rel[-1] == '__init__':
            rel = rel[:-1]
          out['.'.join(rel)] = os.path.join(folder, name)
  return out


def _imports(path, modules):
  """Project modules a file imports (anywhere in it, lazily too), each with its parents."""
  found = set()
  for node in ast.walk(ast.parse(open(path, encoding='utf-8').read(), path)):
    names = []
    if isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
      names = [node.module] + [f'{node.module}.{a.name}' for a in node.names]
    for name in names:
      parts = name.split('.')
      for k in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__ and a/b/__init__ too
        if '.'.join(parts[:k]) in modules:
          found.add('.'.join(parts[:k]))
  return found


def import_graph():
  modules = _project_modules()
  graph = {m: _imports(p, modules) for m, p in modules.items()}
  for m, deps in graph.items():  # a package's own submodules are not its dependencies' cycle
    deps.discard(m)
    deps -= {p for p in deps if m.startswith(p + '.')}  # a submodule needs its parent package
  return graph


def _cycle(graph):
  """One import cycle of the graph as a list of modules, or None."""
  state = {}

  def visit(m, stack):
    state[m] = 1
    for d in sorted(graph[m]):
      if state.get(d) == 1:
        return stack[stack.index(d):] + [d]
      if d not in state:
        found = visit(d, stack + [d])
        if found:
          return found
    state[m] = 2
    return None

  for m in sorted(graph):
    if m not in state:
      found = visit(m, [m])
      if found:
        return found
  return None


def test_module_graph_is_acyclic():
  graph = import_graph()
  assert {'recurseed_jax.stages.seeds', 'recurseed_jax.config_lib', 'data_pipeline.providers',
          'launch'} <= set(graph)  # the walk found the project
  assert 'recurseed_jax.infer' in graph['recurseed_jax.stages.seeds']  # and its imports
  assert _cycle(graph) is None, ' -> '.join(_cycle(graph))


def test_cycle_finder_finds_a_cycle():
  assert _cycle({'a': {'b'}, 'b': {'c'}, 'c': {'a'}, 'd': set()}) == ['a', 'b', 'c', 'a']
  assert _cycle({'a': {'b'}, 'b': set()}) is None
