"""``python -m serving --host H --port P``: the same thing ``riskloop serve`` runs."""

from __future__ import annotations

import argparse

from serving.app import run


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m serving", description="riskloop fraud scoring API")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--workers", type=int, default=None,
                        help="worker processes (default: one per core, at most 4, less one for an embedded Postgres)")
    args = parser.parse_args()
    run(args.host, args.port, args.workers)  # configures riskloop's logging (riskloop.core.logs.configure)


if __name__ == "__main__":
    main()
