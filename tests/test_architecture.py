"""The package map of docs/architecture.md, checked on the source: which layer may import which,
no import cycles, no private names imported across modules, jit/vmap only in the drivers, modules and
functions small enough to read in one sitting."""

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "specmd_jax"
# a layer may import itself and the layers listed (the order of docs/architecture.md)
ALLOWED = {
    "core": {"core"},
    "policies": {"core", "policies"},
    "reference": {"core", "policies", "reference"},
    "kernels": {"core", "policies", "kernels"},
    "run": {"core", "policies", "kernels", "run"},
    "learn": {"core", "policies", "kernels", "run", "learn"},
    "api": {"core", "policies", "reference", "kernels", "run", "learn", "api"},
    "study": {"core", "policies", "reference", "run", "api", "study"},
    "config": {"core", "policies", "api", "study", "config"},
}
JAX_FREE = {"core", "policies", "reference"}
JIT_HOMES = {"run", "learn"}


def _modules(pkg=PKG):
    for p in sorted(pkg.rglob("*.py")):
        rel = p.relative_to(pkg.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        yield ".".join(parts), p


def _imports(name, path):
    """(imported module, imported names, line) for every import in the file, function-level too."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    is_pkg = path.name == "__init__.py"
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, (), node.lineno
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level:
                base = name.split(".") if is_pkg else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([mod] if mod else []))
            yield mod, tuple(a.name for a in node.names), node.lineno


def _layer(mod):
    parts = mod.split(".")
    return parts[1] if len(parts) > 1 else None


def _graph(pkg=PKG):
    names = dict(_modules(pkg))
    g = {}
    for name, path in names.items():
        deps = set()
        for mod, imported, _ in _imports(name, path):
            if not mod.startswith("specmd_jax"):
                continue
            for n in imported:   # "from specmd_jax.core import checks" imports a module
                if f"{mod}.{n}" in names:
                    deps.add(f"{mod}.{n}")
            if mod in names and not all(f"{mod}.{n}" in names for n in imported):
                deps.add(mod)
        g[name] = deps - {name}
    return g


def layer_problems(pkg=PKG):
    bad = []
    for name, path in _modules(pkg):
        layer = _layer(name)
        if layer is None:
            continue
        for mod, _, line in _imports(name, path):
            if mod.split(".")[0] in ("jax", "jaxlib", "optax") and layer in JAX_FREE:
                bad.append(f"{name}:{line} imports {mod} (layer {layer} never imports jax)")
            if mod.startswith("specmd_jax.") and _layer(mod) not in ALLOWED[layer]:
                bad.append(f"{name}:{line} imports {mod} (layer {layer} may import {sorted(ALLOWED[layer])})")
    return bad


def test_layers_import_only_what_the_map_allows():
    bad = layer_problems()
    assert not bad, "\n".join(bad)


def import_cycles(pkg=PKG):
    g = _graph(pkg)
    state, stack, cycles = {}, [], []

    def visit(n):
        state[n] = 1
        stack.append(n)
        for d in sorted(g.get(n, ())):
            if d in g and d.startswith("specmd_jax.") and d.count(".") >= 1:
                if state.get(d) == 1:
                    cycles.append(stack[stack.index(d):] + [d])
                elif d not in state:
                    visit(d)
        stack.pop()
        state[n] = 2

    for n in sorted(g):
        if n not in state:
            visit(n)
    # a package __init__ re-exporting its own modules is not a cycle
    cycles = [c for c in cycles if not any(c[i + 1].startswith(c[i] + ".") or c[i].startswith(c[i + 1] + ".")
                                           for i in range(len(c) - 1))]
    return [" -> ".join(c) for c in cycles]


def test_no_import_cycles():
    cycles = import_cycles()
    assert not cycles, "\n".join(cycles)


def test_no_private_names_imported_across_modules():
    bad = [f"{name}:{line} imports {n} from {mod}"
           for name, path in _modules() for mod, imported, line in _imports(name, path)
           if mod.startswith("specmd_jax") for n in imported if n.startswith("_") and n != "__version__"]
    assert not bad, "\n".join(bad)


def test_jit_and_vmap_live_in_the_drivers():
    bad = []
    for name, path in _modules():
        layer = _layer(name)
        if layer in JIT_HOMES or layer is None:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and node.attr in ("jit", "vmap", "pmap") and \
                    isinstance(node.value, ast.Name) and node.value.id == "jax":
                bad.append(f"{name}:{node.lineno} uses jax.{node.attr}")
    assert not bad, "\n".join(bad)


def fake_core(tmp_path, modules: dict):
    """A throwaway ``specmd_jax`` package whose ``core`` holds ``modules`` (name -> source)."""
    fake = tmp_path / "specmd_jax"
    (fake / "core").mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "core" / "__init__.py").write_text("")
    for name, src in modules.items():
        (fake / "core" / f"{name}.py").write_text(src)
    return fake


def test_the_checker_sees_a_cycle_and_a_bad_layer(tmp_path):
    """The checks above can fail: a planted cycle and a core module importing jax are found."""
    fake = fake_core(tmp_path, {"a": "import jax\nfrom specmd_jax.core import b\n",
                                "b": "from specmd_jax.core.a import x\nfrom specmd_jax.run.demand import y\n"})
    assert any("core.a:1 imports jax" in b for b in layer_problems(fake))
    assert any("core.b:2 imports specmd_jax.run.demand" in b for b in layer_problems(fake))
    assert import_cycles(fake) == ["specmd_jax.core.a -> specmd_jax.core.b -> specmd_jax.core.a"]


MAX_MODULE_LINES = 300
MAX_FUNCTION_LINES = 80
# documented kernel steps (their module docstrings walk through them): one traced step is clearer whole
KERNEL_STEPS = {("specmd_jax.kernels.instant", "make_pf_policy"), ("specmd_jax.kernels.instant", "step"),
                ("specmd_jax.kernels.demand", "make_policy")}


def size_problems(pkg=PKG):
    """Modules over MAX_MODULE_LINES lines and functions over MAX_FUNCTION_LINES (the kernel steps aside)."""
    bad = []
    for name, path in _modules(pkg):
        text = path.read_text(encoding="utf-8")
        n = len(text.splitlines())
        if n > MAX_MODULE_LINES:
            bad.append(f"{name}: {n} lines (> {MAX_MODULE_LINES})")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and (name, node.name) not in KERNEL_STEPS:
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    bad.append(f"{name}:{node.lineno} {node.name}() is {length} lines (> {MAX_FUNCTION_LINES})")
    return bad


def test_modules_and_functions_are_small():
    bad = size_problems()
    assert not bad, "\n".join(bad)


def test_the_size_check_sees_a_long_function(tmp_path):
    fake = fake_core(tmp_path, {"long": "def f():\n" + "    x = 1\n" * 90 + "\n" * 250})
    assert size_problems(fake) == ["specmd_jax.core.long: 341 lines (> 300)",
                                   "specmd_jax.core.long:1 f() is 91 lines (> 80)"]
