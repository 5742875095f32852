"""Prepare a data root for MNIST / Fashion-MNIST: gunzip an offline source, or download.

The offline source (``/work/shared/data`` on the project's machines, see its README) holds the
gzipped IDX files as ``MNIST/*.gz`` and ``FashionMNIST/*.gz`` plus ``MD5SUMS.uncompressed``, lines
``<md5>  <SET>/<name>.gz`` giving the MD5 of each file AFTER gunzip. Preparing writes
``<root>/<SET>/raw/<name>`` atomically, checks every MD5, and skips files already correct, so a
second call only re-hashes. Without a source it falls back to torchvision's ``download=True``.

Command line: ``python -m plasticity.data.prepare [--root DIR] [--source DIR]``.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import os
import socket
import sys
import tempfile
import zlib
from collections.abc import Sequence
from pathlib import Path

from plasticity import PlasticityError

SETS = ("MNIST", "FashionMNIST")
FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
MD5_FILE = "MD5SUMS.uncompressed"
_CHUNK = 1 << 20


def _repo_dir() -> Path | None:
    """The checkout that contains ``platform/plasticity``, if this is one (has pyproject.toml)."""
    repo = Path(__file__).resolve().parents[3]
    return repo if (repo / "pyproject.toml").is_file() else None


def default_data_root() -> Path:
    """$PLASTICITY_DATA, else ``<repo>/data`` in a checkout, else ``~/.cache/plasticity/data``."""
    env = os.environ.get("PLASTICITY_DATA")
    if env:
        return Path(env).expanduser()
    repo = _repo_dir()
    if repo is not None:
        return repo / "data"
    return Path.home() / ".cache" / "plasticity" / "data"


def default_source() -> Path | None:
    """$PLASTICITY_SHARED_DATA if set, else ``<repo>/../shared/data`` if it exists, else None."""
    env = os.environ.get("PLASTICITY_SHARED_DATA")
    if env:
        return Path(env).expanduser()
    repo = _repo_dir()
    if repo is not None and (repo.parent / "shared" / "data").is_dir():
        return repo.parent / "shared" / "data"
    return None


def _md5(path: Path) -> str:
    """Hex MD5 of a file's bytes."""
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def read_md5sums(source: Path) -> dict[str, str]:
    """Parse ``<source>/MD5SUMS.uncompressed`` into {"MNIST/train-images-idx3-ubyte": md5}."""
    path = source / MD5_FILE
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise PlasticityError(
            f"cannot read {path} ({exc.strerror or exc}); the source is incomplete"
        )
    sums: dict[str, str] = {}
    for line in lines:
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or len(parts[0]) != 32:
            raise PlasticityError(f"{path}: malformed line {line.strip()!r}")
        name = parts[1].lstrip("*")  # md5sum's binary-mode marker
        sums[name.removesuffix(".gz")] = parts[0].lower()
    return sums


def _umask() -> int:
    """The process umask (read by setting and restoring it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _gunzip_checked(src: Path, dst: Path, md5: str) -> None:
    """Gunzip ``src`` to ``dst`` atomically if its MD5 matches; raise PlasticityError otherwise."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        digest = hashlib.md5(usedforsecurity=False)
        try:
            with os.fdopen(fd, "wb") as fout, gzip.open(src, "rb") as fin:
                while chunk := fin.read(_CHUNK):
                    digest.update(chunk)
                    fout.write(chunk)
        except (OSError, EOFError, zlib.error) as exc:
            reason = " ".join(str(exc).split()) or type(exc).__name__
            raise PlasticityError(f"source file {src} is corrupt or unreadable ({reason})")
        if digest.hexdigest() != md5:
            raise PlasticityError(
                f"source file {src} is corrupt: MD5 after gunzip is {digest.hexdigest()}, "
                f"expected {md5} (from {MD5_FILE})"
            )
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)


def _prepare_from_source(root: Path, source: Path) -> None:
    """Gunzip every set's files from ``source`` into ``root``, skipping ones already correct."""
    sums = read_md5sums(source)
    for set_name in SETS:
        for fname in FILES:
            key = f"{set_name}/{fname}"
            if key not in sums:
                raise PlasticityError(f"{source / MD5_FILE} has no entry for {key}.gz")
            dst = root / set_name / "raw" / fname
            if dst.is_file() and _md5(dst) == sums[key]:
                continue
            src = source / set_name / f"{fname}.gz"
            if not src.is_file():
                raise PlasticityError(f"source file {src} is missing; the source is incomplete")
            _gunzip_checked(src, dst, sums[key])


def _download(root: Path) -> None:
    """Fetch both sets with torchvision's ``download=True`` (needs internet)."""
    import torchvision.datasets as tvd

    old_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(60)  # no endless hang on a machine without network
    try:
        for set_name in SETS:
            try:
                getattr(tvd, set_name)(str(root), train=True, download=True)
            except (OSError, RuntimeError, ValueError) as exc:  # urllib / torchvision failures
                reason = " ".join(str(exc).split())[:300] or type(exc).__name__
                raise PlasticityError(
                    f"could not download {set_name} into {root} ({reason}); without internet, set "
                    "PLASTICITY_SHARED_DATA or pass --source to a folder of the gzipped files"
                )
    finally:
        socket.setdefaulttimeout(old_timeout)


def prepare_data_root(root: Path | None = None, source: Path | None = None) -> Path:
    """Fill ``root`` (default :func:`default_data_root`) with both image sets; return ``root``.

    ``source`` defaults to :func:`default_source`; a source given explicitly (argument or
    $PLASTICITY_SHARED_DATA) must exist. With no source at all, torchvision downloads the sets.
    """
    root = default_data_root() if root is None else Path(root).expanduser()
    explicit = source is not None or bool(os.environ.get("PLASTICITY_SHARED_DATA"))
    source = default_source() if source is None else Path(source).expanduser()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PlasticityError(f"cannot create data root {root} ({exc.strerror or exc})")
    if source is not None and source.is_dir():
        _prepare_from_source(root, source)
    elif source is not None and explicit:
        raise PlasticityError(
            f"data source {source} is not a folder; fix --source or PLASTICITY_SHARED_DATA"
        )
    else:
        _download(root)
    return root


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: prepare the data root and print one line saying where it is."""
    parser = argparse.ArgumentParser(
        prog="python -m plasticity.data.prepare",
        description="Prepare MNIST and Fashion-MNIST under a data root (offline source or download).",
    )
    parser.add_argument(
        "--root",
        type=Path,
        default=None,
        help="data root (default: $PLASTICITY_DATA, else <repo>/data, else ~/.cache/plasticity/data)",
    )
    parser.add_argument(
        "--source",
        type=Path,
        default=None,
        help="folder of gzipped IDX files plus MD5SUMS.uncompressed "
        "(default: $PLASTICITY_SHARED_DATA, else <repo>/../shared/data if it exists)",
    )
    args = parser.parse_args(argv)
    try:
        root = prepare_data_root(args.root, args.source)
    except PlasticityError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"MNIST and FashionMNIST ready in {root}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
