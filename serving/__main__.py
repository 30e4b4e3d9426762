"""``python -m serving --host H --port P``: the same thing ``riskloop serve`` runs."""

from __future__ import annotations

import argparse
import logging

from serving.app import run


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m serving", description="riskloop fraud scoring API")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    run(args.host, args.port)


if __name__ == "__main__":
    main()
