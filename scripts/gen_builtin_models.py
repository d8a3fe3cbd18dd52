#!/usr/bin/env python3
"""Generate src/shoal/lwm2m/builtin_models.py from the OMA LwM2M registry DDF files.

The server must know the core and sensor objects without reading XML at start-up,
and the table must not drift from the registry, so it is generated with the same
loader the server uses for vendor files (tests/test_model.py compares the two).

    python scripts/gen_builtin_models.py            # write the module
    python scripts/gen_builtin_models.py --check    # exit 1 if it is out of date
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
try:
    from shoal.lwm2m.ddf import load_ddf, normalize_version
    from shoal.lwm2m.model import ObjectModel, Operations, ResourceModel
except ImportError:  # run from a checkout without the package installed
    sys.path.insert(0, str(ROOT / "src"))
    from shoal.lwm2m.ddf import load_ddf, normalize_version
    from shoal.lwm2m.model import ObjectModel, Operations, ResourceModel

DEFAULT_REGISTRY = ROOT.parent / "shared" / "lwm2m-registry"
DEFAULT_OUTPUT = ROOT / "src" / "shoal" / "lwm2m" / "builtin_models.py"

# OMA core objects and the IPSO sensors a fish farm's water-quality devices use.
OBJECT_IDS = (0, 1, 2, 3, 4, 5, 6, 7, 9, 3300, 3303, 3316, 3319, 3320, 3325, 3326, 3327)
# Older versions still spoken by LwM2M 1.0/1.1 clients, kept when the registry has them.
OLDER_VERSIONS = {0: ("1.0", "1.1"), 1: ("1.0", "1.1"), 3: ("1.0", "1.1"), 5: ("1.0", "1.1")}

# The OMA registry files carry this licence; the generated table is a redistribution.
BSD3 = """\
Redistribution and use in source and binary forms, with or without
modification, are permitted provided that the following conditions
are met:

1. Redistributions of source code must retain the above copyright
notice, this list of conditions and the following disclaimer.
2. Redistributions in binary form must reproduce the above copyright
notice, this list of conditions and the following disclaimer in the
documentation and/or other materials provided with the distribution.
3. Neither the name of the copyright holder nor the names of its
contributors may be used to endorse or promote products derived
from this software without specific prior written permission.

THIS SOFTWARE IS PROVIDED BY THE COPYRIGHT HOLDERS AND CONTRIBUTORS
"AS IS" AND ANY EXPRESS OR IMPLIED WARRANTIES, INCLUDING, BUT NOT
LIMITED TO, THE IMPLIED WARRANTIES OF MERCHANTABILITY AND FITNESS
FOR A PARTICULAR PURPOSE ARE DISCLAIMED. IN NO EVENT SHALL THE
COPYRIGHT HOLDER OR CONTRIBUTORS BE LIABLE FOR ANY DIRECT, INDIRECT,
INCIDENTAL, SPECIAL, EXEMPLARY, OR CONSEQUENTIAL DAMAGES (INCLUDING,
BUT NOT LIMITED TO, PROCUREMENT OF SUBSTITUTE GOODS OR SERVICES;
LOSS OF USE, DATA, OR PROFITS; OR BUSINESS INTERRUPTION) HOWEVER
CAUSED AND ON ANY THEORY OF LIABILITY, WHETHER IN CONTRACT, STRICT
LIABILITY, OR TORT (INCLUDING NEGLIGENCE OR OTHERWISE) ARISING IN
ANY WAY OUT OF THE USE OF THIS SOFTWARE, EVEN IF ADVISED OF THE
POSSIBILITY OF SUCH DAMAGE."""

_FILE_NAME = re.compile(r"(\d+)(?:[-_].*)?\.xml")
_COPYRIGHT = re.compile(r"Copyright\s+\d{4}[^\n]*?Open Mobile Alliance\.?")
_CHUNK = 70  # literal length per line: 16 indent + "description=" + 70 + "," < 100


def version_key(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split("."))


def candidate_files(registry: Path) -> list[Path]:
    """`<id>.xml` first, then versioned files (`3-1_0.xml`, `version_history/3_1_1.xml`)."""
    files: list[Path] = []
    for folder in (registry, registry / "version_history"):
        if not folder.is_dir():
            continue
        for file in sorted(folder.glob("*.xml")):
            match = _FILE_NAME.fullmatch(file.name)
            if match and int(match.group(1)) in OBJECT_IDS:
                files.append(file)
    files.sort(key=lambda f: (f.parent != registry, not f.stem.isdigit(), f.name))
    return files


def select_models(registry: Path) -> tuple[list[ObjectModel], list[Path]]:
    """The latest version of each wanted object, plus the older versions worth keeping."""
    found: dict[tuple[int, str], tuple[ObjectModel, Path]] = {}
    for file in candidate_files(registry):
        for model in load_ddf(file):
            if model.id in OBJECT_IDS:
                found.setdefault((model.id, model.version), (model, file))
    chosen: list[tuple[ObjectModel, Path]] = []
    for object_id in OBJECT_IDS:
        versions = sorted((v for (i, v) in found if i == object_id), key=version_key, reverse=True)
        if not versions:
            raise SystemExit(f"object {object_id} not found in {registry}")
        keep = [versions[0]]
        for old in OLDER_VERSIONS.get(object_id, ()):
            normalized = normalize_version(old)
            if normalized in versions and normalized not in keep:
                keep.append(normalized)
        chosen.extend(found[(object_id, v)] for v in sorted(keep, key=version_key))
    return [m for m, _ in chosen], [f for _, f in chosen]


def py_str(text: str) -> str:
    """A double-quoted Python literal with non-ASCII escaped (no confusable characters)."""
    out = ['"']
    for ch in text:
        code = ord(ch)
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif 0x20 <= code < 0x7F:
            out.append(ch)
        elif code <= 0xFF:
            out.append(f"\\x{code:02x}")
        elif code <= 0xFFFF:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    out.append('"')
    return "".join(out)


def split_text(text: str) -> list[str]:
    """Cut a long text after line breaks and spaces into pieces short enough to print."""
    pieces: list[str] = []
    for line in text.splitlines(keepends=True):
        current = ""
        for word in re.split(r"(?<= )", line):
            if current and len(py_str(current + word)) > _CHUNK:
                pieces.append(current)
                current = ""
            current += word
        if current:
            pieces.append(current)
    return pieces or [""]


def string_expr(text: str) -> str:
    pieces = split_text(text)
    if len(pieces) == 1:
        return py_str(pieces[0])
    return "(\n" + "\n".join(py_str(p) for p in pieces) + "\n)"


def operations_expr(ops: Operations) -> str:
    if not ops:
        return "Operations.NONE"
    names = [f"Operations.{flag.name}" for flag in Operations if flag.name and flag in ops]
    return " | ".join(names)


def resource_expr(r: ResourceModel) -> str:
    args = [f"id={r.id}", f"name={py_str(r.name)}", f"type=ResourceType.{r.type.name}"]
    if r.operations != Operations.READ:
        args.append(f"operations={operations_expr(r.operations)}")
    if r.multiple:
        args.append("multiple=True")
    if r.mandatory:
        args.append("mandatory=True")
    if r.range:
        args.append(f"range={string_expr(r.range)}")
    if r.units:
        args.append(f"units={string_expr(r.units)}")
    if r.description:
        args.append(f"description={string_expr(r.description)}")
    return "ResourceModel(" + ", ".join(args) + ")"


def object_expr(m: ObjectModel) -> str:
    resources = ",\n".join(f"{rid}: {resource_expr(r)}" for rid, r in m.resources.items())
    return (
        "ObjectModel(\n"
        f"id={m.id},\n"
        f"name={py_str(m.name)},\n"
        f"resources={{\n{resources},\n}},\n"
        f"version={py_str(m.version)},\n"
        f"lwm2m_version={py_str(m.lwm2m_version)},\n"
        f"multiple={m.multiple},\n"
        f"mandatory={m.mandatory},\n"
        f"urn={py_str(m.urn)},\n"
        f"description={string_expr(m.description)},\n"
        ")"
    )


def copyright_lines(files: Iterable[Path]) -> list[str]:
    lines: set[str] = set()
    for file in files:
        head = file.read_text("utf-8-sig", errors="replace").split("<LWM2M", 1)[0]
        lines.update(" ".join(m.group(0).split()) for m in _COPYRIGHT.finditer(head))
    return sorted(lines) or ["Copyright Open Mobile Alliance."]


def render(models: list[ObjectModel], files: list[Path]) -> str:
    sources = ", ".join(f"{f.name} ({m.id} v{m.version})" for m, f in zip(models, files))
    licence = "\n".join(copyright_lines(files)) + "\n\n" + BSD3
    header = [
        "Generated by scripts/gen_builtin_models.py from the OMA LwM2M registry",
        "(https://github.com/OpenMobileAlliance/lwm2m-registry). DO NOT EDIT: change the",
        "generator or the registry files and run it again.",
        "",
        *textwrap.wrap("Sources: " + sources, width=90),
        "",
        "The object definitions are used under the BSD-3-Clause licence of the registry:",
        "",
        *licence.splitlines(),
    ]
    body = ",\n".join(object_expr(m) for m in models)
    docstring = "Built-in LwM2M object models: OMA core objects and the IPSO sensors Shoal uses."
    return (
        "\n".join(("# " + line).rstrip() for line in header) + f'\n"""{docstring}"""\n'
        "\nfrom __future__ import annotations\n\n"
        "from shoal.lwm2m.model import ObjectModel, Operations, ResourceModel, ResourceType\n\n"
        "BUILTIN_MODELS: tuple[ObjectModel, ...] = (\n" + body + ",\n)\n"
    )


def ruff_format(source: str, filename: Path) -> str:
    """Format with the project's ruff so the committed file passes `ruff format --check`."""
    ruff = shutil.which("ruff") or str(Path(sys.executable).with_name("ruff"))
    if not Path(ruff).exists() and shutil.which(ruff) is None:
        raise SystemExit("ruff not found: install the dev extras (pip install -e '.[dev]')")
    result = subprocess.run(
        [ruff, "format", "--stdin-filename", str(filename), "-"],
        input=source,
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    if result.returncode != 0:
        raise SystemExit(f"ruff format failed:\n{result.stderr}")
    return result.stdout


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--registry", type=Path, default=DEFAULT_REGISTRY)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--check", action="store_true", help="fail if the output is stale")
    args = parser.parse_args(argv)

    models, files = select_models(args.registry)
    source = ruff_format(render(models, files), args.output)
    if args.check:
        current = args.output.read_text("utf-8") if args.output.exists() else ""
        if current != source:
            print(f"{args.output} is out of date; run {Path(__file__).name}", file=sys.stderr)
            return 1
        return 0
    args.output.write_text(source, "utf-8")
    print(f"wrote {args.output}: {len(models)} object models")
    return 0


if __name__ == "__main__":
    sys.exit(main())
