"""Re-execute notebooks in place so their stored outputs are fresh (`make notebooks`).

One thread and no timing metadata, so that a re-run on any machine stores the same
outputs that strict nbval then compares against.
"""

from __future__ import annotations

import os
import sys

import nbformat
from nbclient import NotebookClient


def execute(path: str) -> None:
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb,
        timeout=1200,
        kernel_name="python3",
        record_timing=False,
        resources={"metadata": {"path": os.path.dirname(path)}},
    )
    client.execute()
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = coalesce_streams(cell.outputs)
    nbformat.write(nb, path)


def coalesce_streams(outputs: list) -> list:
    """Merge consecutive stdout (or stderr) outputs: how the kernel split them is timing."""
    merged: list = []
    for out in outputs:
        prev = merged[-1] if merged else None
        if out.output_type == "stream" and prev is not None and prev.output_type == "stream":
            if prev.name == out.name:
                prev.text += out.text
                continue
        merged.append(out)
    return merged


if __name__ == "__main__":
    os.environ["OMP_NUM_THREADS"] = "1"
    for notebook in sys.argv[1:]:
        print(f"executing {notebook}", flush=True)
        execute(notebook)
