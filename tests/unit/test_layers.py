"""The layer contract (docs/ARCHITECTURE.md): imports only go down, and the worker never imports
torch. Every import in every module counts, those inside functions included."""

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("core", "state", "stream_app", "console", "export", "encoders", "streamrec")

BASE, WORKER, TRAINER, ENTRY = 0, 1, 2, 3
LAYER_NAMES = {BASE: "base", WORKER: "worker", TRAINER: "trainer", ENTRY: "entry point"}
# Module (or package) -> layer; the longest matching prefix wins.
LAYERS = {
    "core": BASE,
    "state": WORKER,
    "stream_app": WORKER,
    "console": WORKER,  # `streamrec console`: torch-free, reads the topics, the workers and the registry
    "export.registry": WORKER,
    "export.runtime": WORKER,
    "export.artifacts": WORKER,
    "export.model_updates": WORKER,
    "export": TRAINER,  # ONNX export, parity, the export pipeline, the baseline builder, their CLI
    "encoders": TRAINER,
    "streamrec": ENTRY,
}
TORCH_STACK = {"torch", "transformers", "onnx", "onnxscript", "safetensors", "matplotlib"}


def layer_of(module: str) -> int | None:
    matches = [prefix for prefix in LAYERS if module == prefix or module.startswith(prefix + ".")]
    return LAYERS[max(matches, key=len)] if matches else None


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import, at any depth."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    return found


def violations(path: Path) -> list[str]:
    module = module_name(path)
    own = layer_of(module)
    found = []
    for line, imported in imported_modules(ast.parse(path.read_text(), str(path))):
        target = layer_of(imported)
        where = f"{path.relative_to(REPO)}:{line}: {module} ({LAYER_NAMES[own]})"
        if target is not None and target > own:
            found.append(f"{where} imports {imported} ({LAYER_NAMES[target]})")
        if own <= WORKER and imported.split(".")[0] in TORCH_STACK:
            found.append(f"{where} imports {imported} (the torch stack)")
    return found


def modules() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (REPO / package).rglob("*.py"))


def test_every_module_has_a_layer():
    assert [m for m in map(module_name, modules()) if layer_of(m) is None] == []


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(REPO)))
def test_imports_only_go_down(path):
    assert violations(path) == []


def test_the_contract_catches_an_upward_import(tmp_path):
    """The check itself can fail: a worker module importing the trainer, even inside a function."""
    tree = ast.parse("def f():\n    from encoders.train import train\n    import torch\n")
    imported = [name for _, name in imported_modules(tree)]
    assert imported == ["encoders.train.train", "torch"]
    assert layer_of("encoders.train.train") > layer_of("stream_app.app")
