"""A process that acts on many cases at an agreed moment, to race another such process.

    python -m tests.racer STORE START_EPOCH ACTION CASE_ID [CASE_ID ...]

Prints one JSON line per target: {"target", "ok", "exit_code", "status" or "message"}.
"""

from __future__ import annotations

import json
import sys
import time

from aftersales.commands.cli.output import exit_code
from aftersales.engine.application.handler import Engine
from aftersales.engine.application.requests import (
    ApproveCase,
    ListCases,
    OpenCase,
    RejectCase,
    WithdrawCase,
)
from aftersales.engine.domain.errors import AftersalesError


def main() -> None:
    store, start, action, *case_ids = sys.argv[1:]
    with Engine(store) as engine:
        engine.handle(ListCases(limit=1))  # connect before the start line
        time.sleep(max(0.0, float(start) - time.time()))
        for case_id in case_ids:
            try:
                if action == "approve":
                    result = engine.handle(ApproveCase(case_id=case_id))
                elif action == "withdraw":
                    result = engine.handle(WithdrawCase(case_id=case_id))
                elif action == "reject":
                    result = engine.handle(
                        RejectCase(case_id=case_id, reason="race", communication="chat:race")
                    )
                elif action.startswith("open:"):
                    result = engine.handle(
                        OpenCase(
                            order_id=case_id,
                            type="refund_only",
                            reason="quality.race",
                            amount=action[5:],
                        )
                    )
                else:
                    raise SystemExit(f"unknown action {action}")
                line = {"target": case_id, "ok": True, "status": result["status"]}
            except AftersalesError as exc:
                line = {
                    "target": case_id,
                    "ok": False,
                    "exit_code": exit_code(exc.code),
                    "message": exc.message,
                }
            print(json.dumps(line), flush=True)
        print(f"retries={engine.retries}", file=sys.stderr)


if __name__ == "__main__":
    main()
