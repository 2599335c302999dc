"""The rooms of the code import in one direction only, and no module imports itself back."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_the_import_contracts_hold():
    """setup.cfg [importlinter]: the core never imports training; training's rooms import downwards."""
    command = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    if command is None:
        pytest.fail("import-linter is not installed (pip install -e '.[testing]')")
    done = subprocess.run([command, "--config", str(ROOT / "setup.cfg")], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-3000:]


def test_there_are_no_import_cycles():
    import grimp

    graph = grimp.build_graph("napari_ibis", "training")
    cycles = []
    for module in sorted(graph.modules):
        for imported in graph.find_modules_directly_imported_by(module):
            if imported != module and graph.find_shortest_chain(importer=imported, imported=module):
                cycles.append(f"{module} <-> {imported}")
    assert cycles == []


def test_training_has_only_a_handful_of_entry_modules():
    top = sorted(p.name for p in (ROOT / "training").glob("*.py"))
    assert top == ["__init__.py", "checkpoints.py", "commands.py", "config.py", "pipeline.py", "samples.py"]
