"""The package's layers: each sub-package's docstring names the layers it may import, and no
module imports past them (so the folders show the architecture and cannot drift from it)."""

import ast
import re
from pathlib import Path

import kitchen_lib

ROOT = Path(kitchen_lib.__file__).parent
LAYERS = sorted(p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file())


def allowed(layer: str) -> set[str]:
    doc = ast.get_docstring(ast.parse((ROOT / layer / "__init__.py").read_text())) or ""
    found = re.search(r"^May import: ([a-z_, ]+)\.$", doc, flags=re.M)
    assert found, f"kitchen_lib/{layer}/__init__.py's docstring does not say which layers it may import"
    return {x.strip() for x in found.group(1).split(",")}


def imported_layers(path: Path) -> set[tuple[str, int]]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):  # imports inside functions count too
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
            [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
        for name in names:
            parts = name.split(".")
            if parts[0] == "kitchen_lib" and len(parts) > 1:
                out.add((parts[1], node.lineno))
    return out


def test_every_module_lives_in_a_layer():
    loose = [p.name for p in ROOT.glob("*.py") if p.name not in ("__init__.py", "__main__.py")]
    assert not loose, f"modules outside the layer folders: {loose}"
    assert set(LAYERS) == {"base", "data", "model", "training", "inference", "frontend"}


def test_no_module_imports_a_layer_it_may_not():
    wrong = []
    for layer in LAYERS:
        ok = allowed(layer)
        assert layer in ok and ok <= set(LAYERS), f"{layer}: its docstring names unknown layers {ok - set(LAYERS)}"
        for path in (ROOT / layer).glob("*.py"):
            wrong += [f"{layer}/{path.name}:{line} imports kitchen_lib.{other}" for other, line in imported_layers(path)
                      if other not in ok]
    assert not wrong, "\n".join(sorted(wrong))


def test_the_layers_form_no_cycle():
    # A layer that may import another may not be imported by it (data and model stand side by side).
    for a in LAYERS:
        for b in allowed(a) - {a}:
            assert a not in allowed(b), f"{a} and {b} may import each other"


def test_the_layout_doc_lists_every_module_with_its_size():
    section = (ROOT.parent / "docs" / "layout.md").read_text()
    listed, layer = {}, None
    for row in re.finditer(r"^\|\s*(?:\*\*`(\w+)/`\*\*)?\s*\|\s*(?:`(\w+\.py)`)?\s*\|\s*(\d+)\s*\|", section, flags=re.M):
        if row.group(1):
            layer = row.group(1)
        else:
            listed[f"{layer}/{row.group(2)}"] = int(row.group(3))
    modules = {f"{p.parent.name}/{p.name}": len(p.read_text().splitlines())
               for layer in LAYERS for p in (ROOT / layer).glob("*.py") if p.name != "__init__.py"}
    assert set(listed) == set(modules), f"docs/layout.md misses {set(modules) - set(listed)}, lists gone {set(listed) - set(modules)}"
    drifted = {m: (listed[m], n) for m, n in modules.items() if abs(listed[m] - n) > max(15, n // 5)}
    assert not drifted, f"docs/layout.md's line counts (listed, now) have drifted: {drifted}"
