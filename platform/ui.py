"""``python -m platform.ui``: browse the studies in the MLflow UI (``mlflow server``, one worker).

Serves the default store (``sqlite:///<repo>/outputs/mlflow.db``) or ``--tracking-uri`` on
http://127.0.0.1:5000; binds 127.0.0.1 unless ``--host`` says otherwise. Prints the URL, then
runs the server in the foreground until Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

from platform import paths
from trainables.contract import UI_QUERY

DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 5000


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    p = argparse.ArgumentParser(prog="python -m platform.ui", description=__doc__.split("\n")[0])
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    p.add_argument("--host", default=DEFAULT_HOST,
                   help=f"interface to bind (default {DEFAULT_HOST}: this machine only; 0.0.0.0 exposes it)")
    p.add_argument("--tracking-uri", metavar="URI",
                   help="backend store (default sqlite:///<repo>/outputs/mlflow.db)")
    p.add_argument("--dry-run", action="store_true", help="print the server command and exit")
    return p


def server_command(tracking_uri: str, host: str, port: int) -> list[str]:
    """The ``mlflow server`` command line over ``tracking_uri``."""
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", tracking_uri,
           "--host", host, "--port", str(port), "--workers", "1"]
    db = paths.sqlite_path(tracking_uri)
    if db is not None:
        # Experiments made in the UI keep their artifacts beside the DB, as the platform's do.
        cmd += ["--artifacts-destination", str(db.expanduser().resolve().parent / "mlartifacts")]
    return cmd


def main(argv: Sequence[str] | None = None) -> int:
    """Print the URL and replace this process with the MLflow server."""
    args = build_parser().parse_args(argv)
    uri = args.tracking_uri or paths.default_tracking_uri()
    db = paths.sqlite_path(uri)
    if db is not None and not db.exists():
        print(f"error: --tracking-uri {uri}: no database at {db}; run a study first "
              "(python -m platform.run studies/smoke.yaml) or pass the URI it used", file=sys.stderr)
        return 2
    cmd = server_command(uri, args.host, args.port)
    shown = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
    # The UI's machine-learning view: experiments open on their runs table (MLflow 3 opens Traces).
    print(f"MLflow UI for {uri}: http://{shown}:{args.port}/#/experiments?{UI_QUERY}", flush=True)
    if args.dry_run:
        print(" ".join(cmd))
        return 0
    os.execv(sys.executable, cmd)  # the server is this process: Ctrl-C and kill reach it directly
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
