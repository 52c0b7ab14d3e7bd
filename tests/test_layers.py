"""The import direction of docs/architecture.md, checked on the source with ``ast``.

Each module under ``engine/`` belongs to one layer; it may import its own layer and the
layers below, never one above. The shared leaves (errors, faults, paths, owners) may be
imported by anyone and import only each other. ``engine/__init__.py`` (the package's public
names) is exempt. Imports under ``if TYPE_CHECKING:`` count too: a dependency is one even
when it is only for the type checker.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "engine"

#: Top to bottom. A module is in the layer of its longest matching prefix.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    (
        "front doors",
        ("engine.cli", "engine.bench", "engine.__main__", "engine.http", "engine.drivers"),
    ),
    ("service", ("engine.service", "engine.engine", "engine.requests")),
    (
        "data path / maintenance",
        (
            "engine.datapath",
            "engine.gc",
            "engine.verify",
            "engine.sources",
            "engine.changes",
            "engine.changed_extents",
            "engine.changesources",
            "engine.nbd",
        ),
    ),
    ("repository", ("engine.repository",)),
    ("store", ("engine.store",)),
    ("native", ("engine.native", "engine._")),
]
SHARED = (
    "engine.errors",
    "engine.faults",
    "engine.paths",
    "engine.owners",
    "engine.threads",
    "engine.oscalls",
)
EXEMPT = ("engine",)  # engine/__init__.py


def _matches(module: str, prefix: str) -> bool:
    if prefix.endswith("_"):  # engine._hashing, engine._reader, ...
        return module.startswith(prefix)
    return module == prefix or module.startswith(prefix + ".")


def layer_of(module: str) -> int | str | None:
    """The layer index (0 is the top), "shared", or None for a module no rule names."""
    if any(_matches(module, p) for p in SHARED):
        return "shared"
    best: tuple[int, int] | None = None  # (prefix length, layer)
    for index, (_name, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if _matches(module, p) and (best is None or len(p) > best[0]):
                best = (len(p), index)
    return None if best is None else best[1]


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _known_modules() -> set[str]:
    names = {_module_name(p) for p in ROOT.rglob("*.py")}
    names |= {"engine." + p.name.split(".")[0] for p in ROOT.glob("_*.so")}
    return names


def imports_of(path: Path, known: set[str]) -> list[tuple[int, str, str]]:
    """``(line, imported engine module, source text)`` of every import in ``path``."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    source = path.read_text()
    found = []
    for node in ast.walk(ast.parse(source, str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")
                base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            # ``from . import jobs`` imports the module engine.service.jobs itself.
            targets = [
                f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names
            ]
        else:
            continue
        text = ast.get_source_segment(source, node) or ""
        for t in dict.fromkeys(targets):
            if t == "engine" or t.startswith("engine."):
                found.append((node.lineno, t, text.splitlines()[0] if text else ""))
    return found


def violations() -> list[str]:
    known = _known_modules()
    problems = []
    for path in sorted(ROOT.rglob("*.py")):
        module = _module_name(path)
        if module in EXEMPT:
            continue
        mine = layer_of(module)
        where = path.relative_to(ROOT.parent)
        if mine is None:
            problems.append(f"{where}: module {module} is in no layer (add it to LAYERS)")
            continue
        for line, target, text in imports_of(path, known):
            theirs = layer_of(target)
            if target in EXEMPT:
                problems.append(
                    f"{where}:{line}: {module} imports the package root ({text!r}); "
                    "import the module that defines the name"
                )
            elif theirs is None:
                problems.append(f"{where}:{line}: {module} imports {target}, in no layer")
            elif mine == "shared" and theirs != "shared":
                problems.append(
                    f"{where}:{line}: shared leaf {module} imports {target} "
                    f"({_name(theirs)}): shared leaves import only each other ({text!r})"
                )
            elif theirs != "shared" and mine != "shared" and theirs < mine:
                problems.append(
                    f"{where}:{line}: {module} ({_name(mine)}) imports {target} "
                    f"({_name(theirs)}), a layer above it: {text!r}"
                )
    return problems


def _name(layer: int | str) -> str:
    return layer if isinstance(layer, str) else LAYERS[layer][0]


def test_every_import_points_down_the_layers():
    problems = violations()
    assert not problems, "layer rule broken:\n" + "\n".join(problems)


def test_the_checker_sees_an_upward_import(tmp_path, monkeypatch):
    """A data-path module importing the catalog is reported, with file, line and layers."""
    fake = tmp_path / "engine"
    for p in ROOT.rglob("*.py"):
        dest = fake / p.relative_to(ROOT)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(p.read_text())
    backup = fake / "datapath" / "backup.py"
    backup.write_text(backup.read_text() + "\nfrom ..service import catalog  # noqa\n")
    monkeypatch.setitem(globals(), "ROOT", fake)
    problems = violations()
    assert any(
        "engine/datapath/backup.py" in p
        and "engine.service.catalog (service), a layer above it" in p
        for p in problems
    ), problems


@pytest.mark.parametrize(
    ("module", "layer"),
    [
        ("engine.cli", 0),
        ("engine.service.catalog", 1),
        ("engine.engine", 1),
        ("engine.requests.views", 1),
        ("engine.datapath.backup", 2),
        ("engine.gc", 2),
        ("engine.repository.leases", 3),
        ("engine.store.local", 4),
        ("engine.native", 5),
        ("engine._hashing", 5),
        ("engine.errors", "shared"),
        ("engine.owners", "shared"),
        ("engine.threads", "shared"),
    ],
)
def test_layer_of(module, layer):
    assert layer_of(module) == layer


# ---------------------------------------------------------------------- drivers (issue 14)

#: What a backup driver embedded in another system may not use: the embedded default's
#: service (its catalog included), the request layer, and the embedded default's façade.
DRIVER_FORBIDDEN = ("engine.service", "engine.requests", "engine.engine")


def driver_violations(root: Path | None = None) -> list[str]:
    root = root or ROOT
    known = _known_modules()
    problems = []
    for path in sorted((root / "drivers").rglob("*.py")):
        for line, target, text in imports_of(path, known):
            if any(_matches(target, p) for p in DRIVER_FORBIDDEN) or target == "engine":
                problems.append(f"{path.name}:{line}: a driver imports {target}: {text!r}")
    return problems


def test_drivers_use_only_the_data_path_and_the_repository():
    """engine.drivers imports neither engine.service (catalog), engine.requests nor the façade."""
    assert (ROOT / "drivers" / "cinder.py").exists()
    problems = driver_violations()
    assert not problems, "\n".join(problems)


def test_the_driver_check_sees_a_catalog_import(tmp_path, monkeypatch):
    fake = tmp_path / "engine"
    for p in ROOT.rglob("*.py"):
        dest = fake / p.relative_to(ROOT)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(p.read_text())
    drv = fake / "drivers" / "cinder.py"
    drv.write_text(drv.read_text() + "\nfrom ..service import catalog  # noqa\n")
    monkeypatch.setitem(globals(), "ROOT", fake)
    problems = driver_violations(fake)
    assert any("a driver imports engine.service.catalog" in p for p in problems), problems


# ------------------------------------------------------------ the OS's file calls (issue 14)


def os_file_calls() -> list[str]:
    """Calls of ``os.open``, ``os.read`` or ``os.write`` under ``engine/`` (``file:line``):
    eventlet replaces them in cinder-backup, so the engine takes them from
    ``engine.oscalls``."""
    found = []
    for path in sorted(ROOT.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in ("open", "read", "write")
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "os"
            ):
                found.append(f"{path.relative_to(ROOT.parent)}:{node.lineno}")
    return found


def test_the_engine_opens_reads_and_writes_descriptors_through_oscalls(tmp_path, monkeypatch):
    assert os_file_calls() == []
    fake = tmp_path / "engine"
    fake.mkdir()
    (fake / "sneaky.py").write_text("import os\n\nfd = os.open('x', os.O_RDONLY)\n")
    monkeypatch.setitem(globals(), "ROOT", fake)
    assert os_file_calls() == ["engine/sneaky.py:3"]
