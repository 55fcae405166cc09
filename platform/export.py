"""``python -m platform.export STUDY.yaml --out study.parquet``: the study as one Parquet table.

One row per trial run of the latest study run (or ``--run-id``): run ids, cell, seed, status,
flattened parameters ``param.<dotted>`` and final metrics (``val/acc``, ``test/acc`` ...). The
schema is documented in docs/EXPORT.md. Exit status: 0 written; 2 invalid input or no such study.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from platform import paths
from platform.report import EXIT_INVALID, EXIT_OK, add_study_arguments, open_study


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    p = argparse.ArgumentParser(prog="python -m platform.export", description=__doc__.split("\n")[0],
                                epilog="exit status: 0 written, 2 invalid input or no such study")
    add_study_arguments(p)
    p.add_argument("--out", metavar="PATH", type=Path,
                   help="Parquet file to write (default: <outputs>/exports/<study>.parquet)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; return the exit status."""
    from dashboards.export import write_parquet

    args = build_parser().parse_args(argv)
    opened = open_study(args)
    if opened is None:
        return EXIT_INVALID
    _, data = opened
    out = write_parquet(data, args.out or paths.outputs_dir() / "exports" / f"{data.study}.parquet")
    print(f"{len(data.trials)} trial(s) of study run {data.study_run_id} -> {out.resolve()}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
