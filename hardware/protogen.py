"""Generate importable Python gRPC stubs with protoc (grpcio-tools), for the two generated packages.

protoc writes imports that only work with the output folder on sys.path; `rewrite` turns them into
package imports. Each package's `generate` module names its .proto files and that rewrite; a test
per package regenerates into a temporary folder and compares byte for byte.
"""

from __future__ import annotations

import argparse
import re
import shutil
import tempfile
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path

from grpc_tools import protoc


def generate(*, out: Path, proto_root: Path, sources: Sequence[str], rewrite: tuple[re.Pattern, str],
             init_text: str) -> list[Path]:
    """Write the generated package into `out` (emptied first); return the files written."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    include = str(resources.files("grpc_tools") / "_proto")
    pattern, replacement = rewrite
    with tempfile.TemporaryDirectory() as tmp:
        args = ["protoc", f"-I{proto_root}", f"-I{include}", f"--python_out={tmp}", f"--grpc_python_out={tmp}"]
        if protoc.main([*args, *sources]) != 0:
            raise RuntimeError("protoc failed")
        for produced in sorted(Path(tmp).rglob("*.py")):
            target = out / produced.relative_to(tmp)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(pattern.sub(replacement, produced.read_text()))
    for folder in [out, *sorted(p for p in out.rglob("*") if p.is_dir())]:
        (folder / "__init__.py").write_text(init_text)
    return sorted(out.rglob("*.py"))


def main(argv: list[str] | None, *, description: str, default_out: Path,
         generate_into: Callable[[Path], list[Path]]) -> int:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--out", type=Path, default=default_out, help=f"target folder (default: {default_out})")
    for path in generate_into(parser.parse_args(argv).out):
        print(path)
    return 0
