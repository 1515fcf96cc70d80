"""The AxBench files the test suite reads (Concept10 for Gemma-2-2B layer 20, and the Concept500
concept list): where the tests find them, and ``make data`` (``python tests/axbench_data.py DIR``)
to fetch them from AxBench's public repository.

The files are checked against fixed SHA-256 sums, so a changed upstream file is an error rather
than a silently different test. Files already present with the right sum are not downloaded.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Where the tests look: $AXBENCH_DATA alone when set; else the shared checkout next to the
# repository, then the repository's own .cache/ (where `make data` writes).
CANDIDATES = ([Path(os.environ["AXBENCH_DATA"])] if os.environ.get("AXBENCH_DATA") else
              [REPO.parent / "shared" / "axbench-data", REPO / ".cache" / "axbench-data"])

SOURCE = "https://raw.githubusercontent.com/stanfordnlp/axbench/main/axbench/"
FILES = {  # path under axbench/ in AxBench's repository (and under the data dir here) -> sha256
    "concept10/prod_2b_l20_v1/generate/metadata.jsonl":
        "b3d23061a242ebe586f3b9d63551a9562d25d9f330332002aba69416cb20c320",
    "concept10/prod_2b_l20_v1/generate/train_data.parquet":
        "9483c9934bc51882049f88f90bc3d4ebd9ffbcb4bf049623063cacf51407dfc4",
    "concept500/prod_2b_l20_v1/generate/metadata.jsonl":
        "435aad14e202402b0989d62b279f63dfc63aa2aff0e488cf62652c0700a1efdc",
}


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class FetchError(Exception):
    """A file could not be downloaded or did not match its checksum."""


def data_dir() -> Path:
    """The first candidate directory holding every test file (else the first existing one, or
    the repository's .cache/, so that messages name where `make data` would write)."""
    for candidate in CANDIDATES:
        if not missing_files(candidate):
            return candidate
    return next((c for c in CANDIDATES if c.is_dir()), CANDIDATES[-1])


def missing_files(data_dir: str | Path) -> list[str]:
    """The test files absent from ``data_dir`` or not matching their checksum."""
    data_dir = Path(data_dir)
    return [rel for rel, digest in FILES.items()
            if not (data_dir / rel).is_file() or _sha256((data_dir / rel).read_bytes()) != digest]


def fetch(data_dir: str | Path, source: str = SOURCE, timeout: float = 60.0) -> list[str]:
    """Download every missing file into ``data_dir``; returns what was downloaded."""
    fetched = []
    for rel in missing_files(data_dir):
        url = source + rel
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                data = response.read()
        except OSError as err:
            raise FetchError(f"{url}: download failed ({err}); without network, copy AxBench's "
                            f"axbench/{rel} to {Path(data_dir) / rel}") from None
        if _sha256(data) != FILES[rel]:
            raise FetchError(f"{url}: SHA-256 {_sha256(data)} differs from the expected "
                            f"{FILES[rel]} (the upstream file changed)")
        path = Path(data_dir) / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)  # a killed download never leaves a half file under the real name
        fetched.append(rel)
    return fetched


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python tests/axbench_data.py",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("data_dir", type=Path, nargs="?", default=None,
                        help="default: the first place the tests look that has the files, "
                             "else .cache/axbench-data")
    args = parser.parse_args(argv)
    complete = [c for c in CANDIDATES if not missing_files(c)]
    target = args.data_dir or (complete or CANDIDATES[-1:])[0]
    try:
        fetched = fetch(target)
    except FetchError as err:
        print(f"make data: error: {err}", file=sys.stderr)
        return 2
    print(f"{target}: {len(fetched)} file(s) fetched, {len(FILES) - len(fetched)} already present")
    return 0


if __name__ == "__main__":
    sys.exit(main())
