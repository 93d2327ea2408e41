"""A process that runs one tick at an agreed moment, to race another tick or a person.

    python -m tests.ticker STORE START_EPOCH NOW BATCH GROUP

Prints the tick's JSON (as `aftersales tick --json` does) on one line.
"""

from __future__ import annotations

import json
import sys
import time
from datetime import datetime

from aftersales.engine.application.handler import Engine
from aftersales.engine.application.requests import ListCases
from aftersales.engine.application.tick import tick


def main() -> None:
    store, start, now, batch, group = sys.argv[1:]
    with Engine(store) as engine:
        engine.handle(ListCases(limit=1))  # connect before the start line
        time.sleep(max(0.0, float(start) - time.time()))
        result = tick(engine, datetime.fromisoformat(now), batch=int(batch), group=int(group))
        print(json.dumps(result.to_json()), flush=True)


if __name__ == "__main__":
    main()
