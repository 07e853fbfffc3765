"""Build the Lambda deployment artifact (`make lambda-zip`).

The zip holds what the worker handlers import and nothing else: `datamailer_core`,
`datamailer_workers` and their locked runtime dependencies (`uv export` of the
`datamailer-workers` package, hashes checked), installed flat at the zip's root as Lambda
expects. No API, tracking or operator code, no dev tools. Handler:
`datamailer_workers.lambda_handler.handler`.

By default the wheels are those of the deployed runtime, Python 3.12 on arm64
(`aarch64-manylinux2014`); `--local` installs for the interpreter running this module
instead, which is what the tests unpack and run. (The Lambda python3.12 runtime is Amazon
Linux 2023, glibc 2.34: manylinux_2_28 wheels run there, and asyncpg ships no older
aarch64 wheel.) Entries are sorted and stamped with a
fixed date, without bytecode, so the same lock and sources give the same zip.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

HANDLER: Final = "datamailer_workers.lambda_handler.handler"
LAMBDA_PYTHON_VERSION: Final = "3.12"
LAMBDA_PLATFORM: Final = "aarch64-manylinux_2_28"
DEFAULT_OUTPUT: Final = Path("dist/datamailer-lambda.zip")
# The workspace member whose locked dependencies are exported, and the sources copied
# in beside them (import name → folder, relative to the workspace root).
EXPORTED_PACKAGE: Final = "datamailer-workers"
SOURCES: Final = {
    "datamailer_core": Path("libs/core/src/datamailer_core"),
    "datamailer_workers": Path("services/workers/src/datamailer_workers"),
}
# DOS time starts in 1980; any fixed stamp makes rebuilds byte-identical.
ZIP_DATE: Final = (1980, 1, 1, 0, 0, 0)
# Console scripts (their shebang names the build's interpreter), C headers and uv's
# lock of the target folder are of no use in the function.
SKIPPED: Final = frozenset({"__pycache__", "bin", "include", ".lock"})


class BuildError(Exception):
    """A build step failed; the message says which."""


@dataclass(frozen=True)
class Target:
    """What the wheels are installed for."""

    python_version: str
    python_platform: str | None  # None: the running interpreter's own platform

    @classmethod
    def lambda_runtime(cls) -> "Target":
        return cls(LAMBDA_PYTHON_VERSION, LAMBDA_PLATFORM)

    @classmethod
    def local(cls) -> "Target":
        return cls(f"{sys.version_info.major}.{sys.version_info.minor}", None)

    def uv_options(self) -> list[str]:
        options = ["--python", sys.executable, "--python-version", self.python_version]
        if self.python_platform is not None:
            options += ["--python-platform", self.python_platform]
        return options


def find_uv(root: Path) -> str:
    """`$UV`, else `uv` on PATH, else the copy `make` installs into `.tools/`."""
    for candidate in (os.environ.get("UV"), shutil.which("uv"), str(root / ".tools" / "bin" / "uv")):
        if candidate and Path(candidate).is_file():
            return candidate
    raise BuildError("uv not found: set UV, put uv on PATH or run `make install`")


def _run(step: str, command: Sequence[str], cwd: Path) -> None:
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip().splitlines()
        raise BuildError(f"{step} failed: {detail[-1] if detail else f'exit {done.returncode}'}")


def install(site: Path, *, root: Path, uv: str, target: Target) -> None:
    """The locked dependencies into `site`, then the workspace sources beside them."""
    requirements = site.parent / "requirements.txt"
    _run(
        "uv export",
        [uv, "export", "--frozen", "--no-dev", "--package", EXPORTED_PACKAGE, "--no-emit-workspace"]
        + ["--no-header", "--output-file", str(requirements)],
        root,
    )
    _run(
        "uv pip install",
        [uv, "pip", "install", "--quiet", "--target", str(site), "--requirement", str(requirements)]
        + ["--no-deps", "--require-hashes", "--only-binary", ":all:", "--link-mode", "copy"]
        + ["--no-config", *target.uv_options()],
        root,
    )
    for name, source in SOURCES.items():
        if not (root / source / "__init__.py").is_file():
            raise BuildError(f"{root / source} is not the {name} package")
        shutil.copytree(root / source, site / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


def _files(site: Path) -> Iterator[Path]:
    for path in sorted(site.rglob("*")):
        relative = path.relative_to(site)
        if path.is_dir() or SKIPPED.intersection(relative.parts) or path.suffix == ".pyc":
            continue
        yield relative


def write_zip(site: Path, output: Path) -> int:
    """`site`'s files at the zip's root, in a fixed order and with fixed stamps."""
    count = 0
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(output.name + ".partial")
    with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        for relative in _files(site):
            info = zipfile.ZipInfo(relative.as_posix(), date_time=ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            mode = 0o755 if os.access(site / relative, os.X_OK) else 0o644
            info.external_attr = (0o100000 | mode) << 16
            archive.writestr(info, (site / relative).read_bytes())
            count += 1
    partial.replace(output)
    return count


def build(output: Path, *, root: Path, target: Target, uv: str | None = None) -> int:
    """Build the zip at `output`; returns the number of files in it."""
    root = root.resolve()
    if not (root / "uv.lock").is_file():
        raise BuildError(f"{root} is not the Datamailer workspace (no uv.lock)")
    with tempfile.TemporaryDirectory(prefix="dm-lambda-") as scratch:
        site = Path(scratch) / "site"
        install(site, root=root, uv=uv or find_uv(root), target=target)
        return write_zip(site, output if output.is_absolute() else root / output)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m datamailer_server.lambda_zip",
        description=f"Build the Lambda deployment zip (handler {HANDLER}).",
    )
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="Zip to write.")
    parser.add_argument("--root", type=Path, default=Path.cwd(), help="The workspace root.")
    parser.add_argument("--uv", help="The uv executable (default: $UV, PATH, .tools/bin/uv).")
    parser.add_argument(
        "--local",
        action="store_true",
        help=f"Install wheels for this interpreter, not Lambda's Python {LAMBDA_PYTHON_VERSION} {LAMBDA_PLATFORM}.",
    )
    args = parser.parse_args(argv)
    target = Target.local() if args.local else Target.lambda_runtime()
    try:
        count = build(args.output, root=args.root, target=target, uv=args.uv)
    except BuildError as exc:
        print(f"error: {exc}", file=sys.stderr)  # noqa: T201
        return 1
    platform = target.python_platform or "this platform"
    print(f"{args.output}: {count} files for Python {target.python_version} on {platform}")  # noqa: T201
    return 0


if __name__ == "__main__":
    sys.exit(main())
