"""The AxBench files the test suite and `hypersteer real` read (Concept10 for Gemma-2-2B layer 20,
the Concept500 concept list, and five more generate/ sets: 73 concepts): where the tests find them, and ``make data`` (``python tests/axbench_data.py DIR``)
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
    # The other five generate/ sets (73 concepts in all with the one above): the real-model
    # experiment (`hypersteer real`) trains on the 63 concepts outside concept10/prod_2b_l20_v1.
    "concept10/prod_2b_l10_v1/generate/metadata.jsonl":
        "e2b1a11178b034dbdf3d1b0b18f6011d076f02afc2cc68346f216e2e04ff2ba9",
    "concept10/prod_2b_l10_v1/generate/train_data.parquet":
        "527e54bfd2a322772312e7b6a04568e88f0e2f50aa558e0724f15327d1358f14",
    "concept10/prod_9b_l20_v1/generate/metadata.jsonl":
        "e564d8e1e7d986084771a000a87eecc56865338c652030ca77003f0ab83d8bae",
    "concept10/prod_9b_l20_v1/generate/train_data.parquet":
        "f45f775c971fd2123adc9f93aa6d56f09a442da2893a96a07307056abc782bc5",
    "concept10/prod_9b_l31_v1/generate/metadata.jsonl":
        "ab8ed43fc3b15cbb040e503e3f9f9eb77c1ae3b116f7297642e8d2ad4a1ad02e",
    "concept10/prod_9b_l31_v1/generate/train_data.parquet":
        "318bd060682b030e5c68f8d95bb1b1909ac43dd77337ef49f7709df8f791e6a6",
    "conceptFD/prod_2b_l10_v1/generate/metadata.jsonl":
        "f23f14ab1711dcd280cc4c47b64fed6fe4d68bd23d4126832a15e4a67416c830",
    "conceptFD/prod_2b_l10_v1/generate/train_data.parquet":
        "ef1d6e2f16a19c4d71b33ee9ab5b4cf7c78b58731a39a138dd51c579eac1a470",
    "conceptFD/prod_2b_l20_v1/generate/metadata.jsonl":
        "a11cbe34f9c25be35e666f5e80a53ba962892ab5df9f15474dbf4736998a6411",
    "conceptFD/prod_2b_l20_v1/generate/train_data.parquet":
        "57af7eb23762788362d494efcbcd8563c4e0f42a2eff6cc449b733e89c7a3e21",
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
