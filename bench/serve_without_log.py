"""``riskloop serve`` with the decision log switched off — for the log-on/log-off comparison only.

The product has no switch for this on purpose (a decision that cannot be recorded is not
given); this script replaces the writer's ``offer`` in its own process so that the benchmark
can measure what writing the log adds to p99. Never run it as a service.

    RISKLOOP_API_KEYS=benchkey:scorer .venv/bin/python bench/serve_without_log.py --port 8011
"""

from __future__ import annotations

import argparse
import logging

from serving import decision_log
from serving.app import run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=8011)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger(__name__).warning("DECISION LOG OFF: benchmark only, decisions are not recorded")
    decision_log.DecisionLogWriter.offer = lambda self, row: True  # type: ignore[method-assign]
    run("127.0.0.1", args.port)


if __name__ == "__main__":
    main()
