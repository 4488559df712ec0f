"""Throwaway notebooks for the sweep, report and fault tests (seconds each, no model)."""

from __future__ import annotations

from pathlib import Path


def write_notebook(path: Path, parameters: str, *cells) -> Path:
    """A python3 notebook at `path`: a cell tagged `parameters` holding `parameters`, then `cells` (a string is a
    code cell; an nbformat cell is taken as it is)."""
    import nbformat

    params = nbformat.v4.new_code_cell(parameters)
    params.metadata["tags"] = ["parameters"]
    book = nbformat.v4.new_notebook()
    book.cells = [params] + [nbformat.v4.new_code_cell(c) if isinstance(c, str) else c for c in cells]
    book.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(book, path)
    return path
