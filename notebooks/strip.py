"""Strip outputs and execution counts from notebooks before committing (tests/test_notebooks.py checks).

.venv/bin/python notebooks/strip.py               # every notebook in this folder
.venv/bin/python notebooks/strip.py FILE.ipynb    # just these
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat


def strip(path: Path) -> bool:
    """Clear ``path``'s outputs in place; True when something changed."""
    notebook = nbformat.read(path, as_version=4)
    changed = False
    for cell in notebook.cells:
        if cell.cell_type == "code" and (cell.outputs or cell.execution_count is not None):
            cell.outputs, cell.execution_count, changed = [], None, True
        for volatile in ("execution", "collapsed", "scrolled"):  # run timings and view state are noise in diffs
            changed = cell.metadata.pop(volatile, None) is not None or changed
    if changed:
        nbformat.write(notebook, path)
    return changed


if __name__ == "__main__":
    paths = [Path(p) for p in sys.argv[1:]] or sorted(Path(__file__).parent.glob("*.ipynb"))
    for path in paths:
        print(f"{'stripped' if strip(path) else 'clean   '} {path}")
