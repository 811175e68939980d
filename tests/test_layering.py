"""The package's imports run one way (issue 30): a module imports only from its own layer or
the layers below, and no two modules import each other, even through imports inside functions.

Layers, bottom to top (``rcnn_jax/__init__.py`` lists what each holds):

    core < sim < inputs < datasets < models < training < serving < evaluation < realism
    < commands (``rcnn_jax/<command>.py``, ``realism/__main__.py``)

A lazy import (inside a function) is allowed only with its reason on the line (``# lazy: ...``),
for example keeping TensorFlow or matplotlib out of a command that does not need them.
"""

import ast
import pathlib
import tomllib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1] / 'rcnn_jax'
LAYERS = ['core', 'sim', 'inputs', 'datasets', 'models', 'training', 'serving', 'evaluation',
          'realism', 'commands']


def _layer_of(module: str) -> int:
  parts = module.split('.')
  if len(parts) == 1:  # rcnn_jax itself
    return -1
  top = parts[1]
  if parts[-1] == '__main__':  # python -m rcnn_jax.<package>
    return len(LAYERS) - 1
  for i, layer in enumerate(LAYERS):
    if top == layer or (isinstance(layer, tuple) and top in layer):
      return i
  return len(LAYERS) - 1  # rcnn_jax/<command>.py


def _modules():
  mods = {}
  for path in ROOT.rglob('*.py'):
    name = '.'.join(('rcnn_jax',) + path.relative_to(ROOT).with_suffix('').parts)
    name = name.removesuffix('.__init__')
    mods[name] = path
  return mods


def imports(mods=None):
  """{module: [(imported module, line, lazy, source line)]} for imports of rcnn_jax modules."""
  mods = mods or _modules()
  out = {}
  for name, path in mods.items():
    text = path.read_text()
    lines = text.splitlines()
    found = []
    tree = ast.parse(text)
    top_level = {id(n) for n in tree.body}
    for node in ast.walk(tree):
      if not isinstance(node, (ast.Import, ast.ImportFrom)):
        continue
      if isinstance(node, ast.Import):
        targets = [a.name for a in node.names]
      elif node.level:
        raise AssertionError(f'{path}:{node.lineno}: relative import (use rcnn_jax.<...>)')
      else:
        targets = [f'{node.module}.{a.name}' if f'{node.module}.{a.name}' in mods else node.module
                   for a in node.names]
      for t in targets:
        if t and (t == 'rcnn_jax' or t.startswith('rcnn_jax.')):
          found.append((t, node.lineno, id(node) not in top_level, lines[node.lineno - 1]))
    out[name] = found
  return out


def _cycle(graph):
  """A cycle in {node: set(nodes)} as a list, or None."""
  state, stack = {}, []

  def visit(n):
    state[n] = 1
    stack.append(n)
    for m in sorted(graph.get(n, ())):
      if state.get(m) == 1:
        return stack[stack.index(m):] + [m]
      if m not in state:
        c = visit(m)
        if c:
          return c
    stack.pop()
    state[n] = 2
    return None

  for n in sorted(graph):
    if n not in state:
      c = visit(n)
      if c:
        return c
  return None


def test_imports_run_down_the_layers():
  bad = []
  for name, found in imports().items():
    for target, line, _, src in found:
      if _layer_of(target) > _layer_of(name):
        bad.append(f'{name}:{line} imports {target} (layer {_layer_of(target)} > '
                   f'{_layer_of(name)}): {src.strip()}')
  assert not bad, '\n'.join(bad)


def test_no_import_cycles():
  mods = _modules()
  graph = {n: {t for t, _, _, _ in f if t != n and t in mods} for n, f in imports(mods).items()}
  # A package's __init__ that re-exports its modules is not a cycle with them.
  for n in graph:
    graph[n] = {t for t in graph[n]
                if not (n.startswith(t + '.') and mods[t].name == '__init__.py')}
  assert _cycle(graph) is None, ' -> '.join(_cycle(graph))


def test_lazy_imports_state_their_reason():
  bad = [f'{name}:{line}: {src.strip()}' for name, found in imports().items()
         for _, line, lazy, src in found if lazy and '# lazy:' not in src]
  assert not bad, 'imports inside functions need "# lazy: <reason>":\n' + '\n'.join(bad)


def test_the_checks_catch_a_cycle_and_an_upward_import():
  assert _cycle({'a': {'b'}, 'b': {'c'}, 'c': {'a'}}) == ['a', 'b', 'c', 'a']
  assert _cycle({'a': {'b'}, 'b': set()}) is None
  assert _layer_of('rcnn_jax.sim.render') < _layer_of('rcnn_jax.models.networks')
  assert _layer_of('rcnn_jax.train') == len(LAYERS) - 1


@pytest.mark.parametrize('package', ['core', 'sim', 'inputs', 'models', 'training', 'serving',
                                     'evaluation', 'realism', 'datasets'])
def test_every_package_says_what_it_holds(package):
  doc = ast.get_docstring(ast.parse((ROOT / package / '__init__.py').read_text()))
  assert doc and len(doc) > 40


def test_every_package_is_installed():
  """pyproject.toml lists every package (a wheel built from it holds all of rcnn_jax)."""

  listed = set(tomllib.loads((ROOT.parent / 'pyproject.toml').read_text())
               ['tool']['setuptools']['packages'])
  found = {'.'.join(('rcnn_jax',) + p.parent.relative_to(ROOT).parts)
           for p in ROOT.rglob('__init__.py')}
  assert found == listed, (found - listed, listed - found)
