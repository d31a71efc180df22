"""The layers of the house (README, Layout): llamalogue/ imports nothing above it, and no project modules import
each other in a circle (function-local imports included)."""

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGES = ("llamalogue", "rl", "evaluation", "study", "configs")


def _graph() -> dict[str, set[str]]:
  modules = {}
  for f in ROOT.glob("**/*.py"):
    rel = f.relative_to(ROOT)
    if rel.parts[0] not in PACKAGES:
      continue
    name = ".".join(rel.with_suffix("").parts).removesuffix(".__init__")
    deps = set()
    for node in ast.walk(ast.parse(f.read_text())):
      if isinstance(node, ast.ImportFrom) and node.module:
        deps |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
      elif isinstance(node, ast.Import):
        deps |= {a.name for a in node.names}
    modules[name] = deps
  return {m: {d for d in deps if d in modules and d != m} for m, deps in modules.items()}


def test_llamalogue_imports_nothing_above_it():
  upward = sorted((m, d) for m, deps in _graph().items() if m.startswith("llamalogue")
                  for d in deps if d.split(".")[0] != "llamalogue")
  assert upward == []


def test_no_import_cycles():
  graph, cycles = _graph(), []

  def visit(m, path):
    for d in sorted(graph[m]):
      if d in path:
        cycles.append(path[path.index(d):] + [d])
      else:
        visit(d, path + [d])
  for m in sorted(graph):
    visit(m, [m])
  assert cycles == []
