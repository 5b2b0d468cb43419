"""The layers show in the folders: only the command-line layer (shmq/cli/) may import telemetry,
and only the vLLM adapter (shmq/vllm/) may import vllm or torch (elsewhere torch is told from sys.modules).

The core is read from its source, not imported, so an import inside a function
or behind a condition counts too.
"""

from __future__ import annotations

import ast
import pathlib

import shmq

PACKAGE = pathlib.Path(shmq.__file__).parent
COMMAND_LINE = PACKAGE / "cli"
VLLM_ADAPTER = PACKAGE / "vllm"
FORBIDDEN = ("telemetry", "shmq.telemetry")
THIRD_PARTY_ML = ("vllm", "torch")


def module_name(path: pathlib.Path, root: pathlib.Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: pathlib.Path, root: pathlib.Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in the file; relative imports are resolved."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *filter(None, [node.module])])
            # `from shmq import telemetry` imports the module shmq.telemetry
            found += [(node.lineno, base)] + [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
    return found


def core_modules() -> list[pathlib.Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if COMMAND_LINE not in p.parents)


def layer_violations(paths: list[pathlib.Path], root: pathlib.Path = PACKAGE.parent,
                     forbidden: tuple[str, ...] = FORBIDDEN) -> list[str]:
    """'file:line imports module' for each import of a forbidden module; `root` holds the package folder."""
    return [f"{path.relative_to(root)}:{line} imports {module}"
            for path in paths for line, module in imported_modules(path, root)
            if any(module == f or module.startswith(f + ".") for f in forbidden)]


def test_no_module_of_shmq_outside_its_command_line_layer_imports_telemetry():
    paths = core_modules()
    assert PACKAGE / "writer.py" in paths and PACKAGE / "cli" / "demo.py" not in paths  # the walk sees the core
    assert layer_violations(paths) == []


def test_only_the_vllm_adapter_imports_vllm_or_torch():
    paths = sorted(p for p in PACKAGE.rglob("*.py") if VLLM_ADAPTER not in p.parents)
    assert PACKAGE / "writer.py" in paths and PACKAGE / "cli" / "demo.py" in paths  # the walk sees core and cli
    assert layer_violations(paths, forbidden=THIRD_PARTY_ML) == []


def flagged_files(tmp_path, sources: dict[str, str], **check) -> tuple[set[str], list[str]]:
    """The files of a fake shmq tree holding `sources` that layer_violations flags, and its report."""
    for relative, text in sources.items():
        path = tmp_path / "shmq" / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    found = layer_violations(sorted((tmp_path / "shmq").rglob("*.py")), root=tmp_path, **check)
    return {line.split(":")[0] for line in found}, found


def test_the_vllm_check_flags_vllm_and_torch_but_not_lookalikes(tmp_path):
    sources = {
        "plain.py": "import torch\n",
        "nested.py": "def f():\n    from vllm.distributed.device_communicators import shm_broadcast\n",
        "named.py": "from torch import Tensor\n",
        "clean.py": "import sys\ntorch = sys.modules.get('torch')\nimport torchvisionish\n",
    }
    flagged, found = flagged_files(tmp_path, sources, forbidden=THIRD_PARTY_ML)
    assert flagged == {f"shmq/{relative}" for relative in sources if relative != "clean.py"}, found


def test_the_check_sees_every_form_of_import(tmp_path):
    sources = {
        "plain.py": "import telemetry.top\n",
        "aliased.py": "import os, telemetry as t\n",
        "nested.py": "def f():\n    from shmq.telemetry.watchdog import sidecar\n",
        "named.py": "from shmq import telemetry\n",
        "sub/relative.py": "from ..telemetry import names\n",
        "sub/relative_name.py": "from .. import telemetry\n",
        "clean.py": "import shmq.stats\nfrom . import layout\nimport telemetryish\n",
    }
    flagged, found = flagged_files(tmp_path, sources)
    assert flagged == {f"shmq/{relative}" for relative in sources if relative != "clean.py"}, found
