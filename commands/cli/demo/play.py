"""`aftersales demo`: the article's cases, end to end, on a fresh SQLite store."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import click

from aftersales.commands.cli.options import json_option
from aftersales.commands.cli.output import exit_code, table, to_json
from aftersales.engine.commands import (
    AcceptOffer,
    ApproveCase,
    DeliverOrder,
    EscalateCase,
    MessageCase,
    OfferChange,
    OpenCase,
    PlaceOrder,
    RateCase,
    ReceiveGoods,
    RecoverGoods,
    RefundCase,
    RejectCase,
    Reship,
    RuleCase,
    ShipBack,
    ShipReplacement,
)
from aftersales.engine.deadlines import tick
from aftersales.engine.errors import AftersalesError
from aftersales.engine.service import Engine
from aftersales.projections.ledger import TOTALS, ledger
from aftersales.projections.registry import VIEWS
from aftersales.projections.runner import Projector

CST = timezone(timedelta(hours=8), "CST")
START = datetime(2026, 11, 1, 10, 0, tzinfo=CST)


@dataclass
class Story:
    """A running narrative: each step's time, who acted, what, and the status after."""

    engine: Engine
    steps: list[dict[str, Any]] = field(default_factory=list)
    cases: dict[str, str] = field(default_factory=dict)

    def at(self, days: float = 0, hours: float = 0) -> str:
        return (START + timedelta(days=days, hours=hours)).isoformat()

    def step(self, title: str, who: str, call: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        result = call()
        self.steps.append(
            {
                "story": title,
                "who": who,
                "did": result.get("_did", ""),
                "status": result.get("status"),
                "case_id": result.get("case_id"),
                "order_id": result.get("order_id"),
                "refunded_amount": result.get("refunded_amount"),
                "due_at": result.get("due_at"),
                "due_action": result.get("due_action"),
            }
        )
        return result

    def order(
        self, title: str, order_id: str, merchant: str, buyer: str, lines: list[str], at: str
    ) -> None:
        """The order system reports an order placed."""
        self.step(
            title,
            "order system",
            lambda: did(
                "order placed",
                self.engine.handle(
                    PlaceOrder(
                        order_id=order_id, merchant=merchant, buyer=buyer, lines=lines, at=at
                    )
                ),
            ),
        )

    def tick(self, title: str, now: str, case_id: str) -> None:
        """The clock at ``now``: fire whatever fell due, and show the case afterwards."""
        fired = tick(self.engine, datetime.fromisoformat(now)).fired
        case = self.engine.get_case(case_id)
        what = ", ".join(d.action.value for d in fired) or "nothing due yet"
        self.steps.append(
            {
                "story": title,
                "who": "system",
                "did": f"tick at {now[:10]} {now[11:16]}: {what}",
                "status": case["status"],
                "case_id": case_id,
                "order_id": case["order_id"],
                "refunded_amount": case["refunded_amount"],
                "due_at": case["due_at"],
                "due_action": case["due_action"],
                "fired": [d.to_json() for d in fired],
            }
        )

    def refused(self, title: str, who: str, call: Callable[[], object]) -> None:
        try:
            call()
        except AftersalesError as exc:
            self.steps.append(
                {
                    "story": title,
                    "who": who,
                    "refused": exc.message,
                    "exit_code": exit_code(exc.code),
                }
            )
        else:  # pragma: no cover - the demo shows a refusal here
            raise AssertionError(f"{title}: expected a refusal")


def did(label: str, result: dict[str, Any]) -> dict[str, Any]:
    return {**result, "_did": label}


def play(engine: Engine) -> Story:
    s = Story(engine)
    e = engine

    # 1. The article's phone case: a colour difference, returned and refunded.
    t = "phone case colour difference"
    s.order(
        t, "KS-1001", "shop-aurora", "buyer-lin", ["CASE-RED-15:1:39.90:phone_accessory"], s.at()
    )
    s.step(
        t,
        "order system",
        lambda: did("delivered", e.handle(DeliverOrder(order_id="KS-1001", at=s.at(2)))),
    )
    case = s.step(
        t,
        "buyer-lin",
        lambda: did(
            "opened return_refund (quality.colour_difference)",
            e.handle(
                OpenCase(
                    order_id="KS-1001",
                    type="return_refund",
                    reason="quality.colour_difference",
                    amount="39.90",
                    evidence=["photo:case-colour.jpg", "chat:20261103-lin"],
                    note="the red looks orange",
                    at=s.at(3),
                )
            ),
        ),
    )
    cid = s.cases[t] = case["case_id"]
    s.step(
        t,
        "staff-7",
        lambda: did(
            "approved, return address given",
            e.handle(
                ApproveCase(
                    case_id=cid,
                    return_address="Aurora returns, 88 Wensan Rd, Hangzhou",
                    by="staff-7",
                    at=s.at(3, 5),
                )
            ),
        ),
    )
    s.step(
        t,
        "buyer-lin",
        lambda: did(
            "shipped back SF1234567890",
            e.handle(
                ShipBack(case_id=cid, carrier="SF Express", waybill="SF1234567890", at=s.at(4))
            ),
        ),
    )
    s.step(
        t,
        "staff-7",
        lambda: did(
            "received, condition ok: refunded",
            e.handle(ReceiveGoods(case_id=cid, condition="ok", by="staff-7", at=s.at(6))),
        ),
    )
    s.step(
        t,
        "buyer-lin",
        lambda: did(
            "rated 5",
            e.handle(RateCase(case_id=cid, score=5, comment="quick and polite", at=s.at(6, 2))),
        ),
    )

    # 2. Refund only before shipping: approved means refunded at once.
    t = "refund before shipping"
    s.order(t, "KS-1002", "shop-aurora", "buyer-wu", ["CHARGER-20W:2:59.00:electronics"], s.at(1))
    case = s.step(
        t,
        "buyer-wu",
        lambda: did(
            "opened refund_only (buyer.changed_mind)",
            e.handle(
                OpenCase(
                    order_id="KS-1002",
                    type="refund_only",
                    reason="buyer.changed_mind",
                    amount="118.00",
                    at=s.at(1, 3),
                )
            ),
        ),
    )
    cid = s.cases[t] = case["case_id"]
    s.step(
        t,
        "staff-2",
        lambda: did(
            "approved: refunded at once",
            e.handle(ApproveCase(case_id=cid, by="staff-2", at=s.at(1, 4))),
        ),
    )

    # 3. An exchange for the wrong size.
    t = "exchange for size"
    s.order(t, "KS-1003", "shop-linen", "buyer-zhao", ["SHIRT-M:1:129.00:apparel"], s.at())
    s.step(
        t,
        "order system",
        lambda: did("delivered", e.handle(DeliverOrder(order_id="KS-1003", at=s.at(2)))),
    )
    case = s.step(
        t,
        "buyer-zhao",
        lambda: did(
            "opened exchange (quality.size)",
            e.handle(
                OpenCase(
                    order_id="KS-1003",
                    type="exchange",
                    reason="quality.size_mismatch",
                    at=s.at(2, 6),
                )
            ),
        ),
    )
    cid = s.cases[t] = case["case_id"]
    s.step(t, "shop-linen", lambda: did("approved", e.handle(ApproveCase(case_id=cid, at=s.at(3)))))
    s.step(
        t,
        "buyer-zhao",
        lambda: did(
            "shipped back",
            e.handle(ShipBack(case_id=cid, carrier="YTO", waybill="YT8800123", at=s.at(3, 4))),
        ),
    )
    s.step(
        t,
        "shop-linen",
        lambda: did(
            "received ok: replacement owed", e.handle(ReceiveGoods(case_id=cid, at=s.at(5)))
        ),
    )
    s.step(
        t,
        "shop-linen",
        lambda: did(
            "replacement shipped: completed",
            e.handle(
                ShipReplacement(case_id=cid, carrier="YTO", waybill="YT8800999", at=s.at(5, 3))
            ),
        ),
    )

    # 4. Custom-made goods: no no-reason return; a rejection; a follow-up case.
    t = "custom-made, rejected, then a new case"
    s.order(t, "KS-1004", "shop-linen", "buyer-chen", ["NAMEPLATE:1:88.00:custom_made"], s.at())
    s.step(
        t,
        "order system",
        lambda: did("delivered", e.handle(DeliverOrder(order_id="KS-1004", at=s.at(3)))),
    )
    s.refused(
        t,
        "buyer-chen",
        lambda: e.handle(
            OpenCase(
                order_id="KS-1004",
                type="return_refund",
                reason="buyer.changed_mind",
                amount="88.00",
                at=s.at(4),
            )
        ),
    )
    case = s.step(
        t,
        "buyer-chen",
        lambda: did(
            "opened return_refund (quality.engraving_error)",
            e.handle(
                OpenCase(
                    order_id="KS-1004",
                    type="return_refund",
                    reason="quality.engraving_error",
                    amount="88.00",
                    evidence=["photo:plate.jpg"],
                    at=s.at(4, 1),
                )
            ),
        ),
    )
    first = case["case_id"]
    s.step(
        t,
        "staff-3",
        lambda: did(
            "rejected after a call",
            e.handle(
                RejectCase(
                    case_id=first,
                    reason="engraving matches the submitted text",
                    communication="call:20261105-1432",
                    by="staff-3",
                    at=s.at(5),
                )
            ),
        ),
    )
    case = s.step(
        t,
        "buyer-chen",
        lambda: did(
            "opened a new case, refund_only",
            e.handle(
                OpenCase(
                    order_id="KS-1004",
                    type="refund_only",
                    reason="quality.engraving_error",
                    amount="30.00",
                    note="partial refund agreed on the phone",
                    at=s.at(5, 2),
                )
            ),
        ),
    )
    cid = s.cases[t] = case["case_id"]
    s.step(
        t,
        "staff-3",
        lambda: did(
            "refunded the agreed 30.00",
            e.handle(RefundCase(case_id=cid, amount="30.00", by="staff-3", at=s.at(5, 3))),
        ),
    )

    # 5. Returned goods arrive damaged: no refund, the platform must decide.
    t = "returned goods damaged"
    s.order(t, "KS-1005", "shop-aurora", "buyer-lin", ["EARBUDS-X:1:199.00:electronics"], s.at())
    s.step(
        t,
        "order system",
        lambda: did("delivered", e.handle(DeliverOrder(order_id="KS-1005", at=s.at(1)))),
    )
    case = s.step(
        t,
        "buyer-lin",
        lambda: did(
            "opened return_refund (buyer.no_longer_needed)",
            e.handle(
                OpenCase(
                    order_id="KS-1005",
                    type="return_refund",
                    reason="buyer.no_longer_needed",
                    amount="199.00",
                    at=s.at(2),
                )
            ),
        ),
    )
    cid = s.cases[t] = case["case_id"]
    s.step(
        t,
        "staff-7",
        lambda: did("approved", e.handle(ApproveCase(case_id=cid, by="staff-7", at=s.at(2, 5)))),
    )
    s.step(
        t,
        "buyer-lin",
        lambda: did(
            "shipped back",
            e.handle(ShipBack(case_id=cid, carrier="ZTO", waybill="ZT55501", at=s.at(3))),
        ),
    )
    s.step(
        t,
        "staff-7",
        lambda: did(
            "received damaged: escalated",
            e.handle(ReceiveGoods(case_id=cid, condition="damaged", by="staff-7", at=s.at(5))),
        ),
    )
    # The platform rules within its 72 hours: the photos show the damage happened after
    # delivery, so the merchant need not refund (a disputed receipt ruled for it ends the case).
    s.step(
        t,
        "agent-3",
        lambda: did(
            "ruled for the merchant: closed",
            e.handle(
                RuleCase(
                    case_id=cid,
                    in_favour_of="merchant",
                    note="the damage is not from transit",
                    by="agent-3",
                    at=s.at(6),
                )
            ),
        ),
    )

    # 6. The merchant does not answer in 48 hours: the system approves.
    t = "merchant silent for 48 hours"
    s.order(t, "KS-1006", "shop-linen", "buyer-wu", ["SCARF:1:45.00:apparel"], s.at())
    s.step(
        t,
        "order system",
        lambda: did("delivered", e.handle(DeliverOrder(order_id="KS-1006", at=s.at(1)))),
    )
    case = s.step(
        t,
        "buyer-wu",
        lambda: did(
            "opened refund_only (logistics.damaged)",
            e.handle(
                OpenCase(
                    order_id="KS-1006",
                    type="refund_only",
                    reason="logistics.damaged",
                    amount="45.00",
                    evidence=["photo:torn-box.jpg"],
                    at=s.at(2),
                )
            ),
        ),
    )
    cid = s.cases[t] = case["case_id"]
    s.tick(t, s.at(3, 23), cid)  # hour 47: nothing is due yet
    s.tick(t, s.at(4), cid)  # hour 48: the system approves, and refund only refunds

    # 7. Nobody acts on a return: auto-approved, then the buyer never ships it back.
    t = "return never shipped back"
    s.order(t, "KS-1007", "shop-aurora", "buyer-chen", ["LAMP-DESK:1:89.00:home"], s.at())
    s.step(
        t,
        "order system",
        lambda: did("delivered", e.handle(DeliverOrder(order_id="KS-1007", at=s.at(2)))),
    )
    case = s.step(
        t,
        "buyer-chen",
        lambda: did(
            "opened return_refund (quality.flickering)",
            e.handle(
                OpenCase(
                    order_id="KS-1007",
                    type="return_refund",
                    reason="quality.flickering",
                    amount="89.00",
                    at=s.at(3),
                )
            ),
        ),
    )
    cid = s.cases[t] = case["case_id"]
    s.tick(t, s.at(5), cid)  # the merchant let 48 hours pass: the buyer's 10 days start now
    s.tick(t, s.at(15), cid)  # 10 days later, no waybill: the system closes the case

    # 8. A gift is missing; the merchant says it was packed; the platform upholds the claim,
    #    and the merchant cannot reship: the platform pays the gift's list price first.
    t = "missing gift, platform pays first"
    s.order(
        t,
        "KS-1008",
        "shop-aurora",
        "buyer-zhao",
        ["EARBUDS-Y:1:159.00:electronics", "POUCH:1:0.00:gift:19.90"],
        s.at(),
    )
    s.step(
        t,
        "order system",
        lambda: did("delivered", e.handle(DeliverOrder(order_id="KS-1008", at=s.at(2)))),
    )
    case = s.step(
        t,
        "buyer-zhao",
        lambda: did(
            "opened reship (missing_items.gift)",
            e.handle(
                OpenCase(
                    order_id="KS-1008",
                    type="reship",
                    reason="missing_items.gift",
                    lines=["POUCH"],
                    evidence=["photo:open-box.jpg"],
                    at=s.at(2, 4),
                )
            ),
        ),
    )
    cid = s.cases[t] = case["case_id"]
    s.step(
        t,
        "staff-7",
        lambda: did(
            "rejected: 'it was packed'",
            e.handle(
                RejectCase(
                    case_id=cid,
                    reason="packing photo shows the pouch",
                    communication="chat:20261103-zhao",
                    by="staff-7",
                    at=s.at(2, 8),
                )
            ),
        ),
    )
    s.step(
        t,
        "buyer-zhao",
        lambda: did(
            "asked the platform (missing_items)",
            e.handle(
                EscalateCase(
                    case_id=cid,
                    claim="missing_items",
                    evidence=["photo:open-box.jpg", "video:unboxing.mp4"],
                    at=s.at(2, 9),
                )
            ),
        ),
    )
    s.step(
        t,
        "agent-3",
        lambda: did(
            "ruled for the buyer: reship in 24 h",
            e.handle(
                RuleCase(
                    case_id=cid,
                    in_favour_of="buyer",
                    note="unboxing video shows no pouch",
                    by="agent-3",
                    at=s.at(3),
                )
            ),
        ),
    )
    s.step(
        t,
        "staff-7",
        lambda: did(
            "cannot reship: the platform pays first",
            e.handle(
                Reship(
                    case_id=cid, cannot=True, note="pouch out of stock", by="staff-7", at=s.at(3, 5)
                )
            ),
        ),
    )

    # 9. The merchant rejects without cause; the platform refunds first and the merchant
    #    recovers the goods itself.
    t = "unjustified rejection"
    s.order(t, "KS-1009", "shop-linen", "buyer-lin", ["COAT:1:399.00:apparel"], s.at())
    s.step(
        t,
        "order system",
        lambda: did("delivered", e.handle(DeliverOrder(order_id="KS-1009", at=s.at(2)))),
    )
    case = s.step(
        t,
        "buyer-lin",
        lambda: did(
            "opened refund_only (quality.torn_seam)",
            e.handle(
                OpenCase(
                    order_id="KS-1009",
                    type="refund_only",
                    reason="quality.torn_seam",
                    amount="399.00",
                    evidence=["photo:seam.jpg"],
                    at=s.at(3),
                )
            ),
        ),
    )
    cid = s.cases[t] = case["case_id"]
    s.step(
        t,
        "staff-2",
        lambda: did(
            "rejected: 'worn'",
            e.handle(
                RejectCase(
                    case_id=cid,
                    reason="worn",
                    communication="call:20261104-lin",
                    by="staff-2",
                    at=s.at(3, 6),
                )
            ),
        ),
    )
    s.step(
        t,
        "buyer-lin",
        lambda: did(
            "asked the platform (unjustified_rejection)",
            e.handle(
                EscalateCase(
                    case_id=cid,
                    claim="unjustified_rejection",
                    evidence=["photo:seam.jpg"],
                    at=s.at(3, 8),
                )
            ),
        ),
    )
    s.step(
        t,
        "agent-5",
        lambda: did(
            "ruled for the buyer: the platform refunds",
            e.handle(
                RuleCase(
                    case_id=cid,
                    in_favour_of="buyer",
                    note="seam defect visible",
                    by="agent-5",
                    at=s.at(4),
                )
            ),
        ),
    )
    s.step(
        t,
        "staff-2",
        lambda: did(
            "recovered the coat from the buyer",
            e.handle(RecoverGoods(case_id=cid, note="courier pickup", by="staff-2", at=s.at(6))),
        ),
    )

    # 10. Negotiation: a scratch on a return; the merchant offers part of the money back
    #     instead, the buyer keeps the goods and accepts.
    t = "negotiated refund only"
    s.order(t, "KS-1010", "shop-aurora", "buyer-wu", ["KETTLE-1L:1:129.00:home"], s.at())
    s.step(
        t,
        "order system",
        lambda: did("delivered", e.handle(DeliverOrder(order_id="KS-1010", at=s.at(2)))),
    )
    case = s.step(
        t,
        "buyer-wu",
        lambda: did(
            "opened return_refund (quality.scratched)",
            e.handle(
                OpenCase(
                    order_id="KS-1010",
                    type="return_refund",
                    reason="quality.scratched",
                    amount="129.00",
                    at=s.at(3),
                )
            ),
        ),
    )
    cid = s.cases[t] = case["case_id"]
    s.step(
        t,
        "buyer-wu",
        lambda: did(
            "message with two photos",
            e.handle(
                MessageCase(
                    case_id=cid,
                    text="a scratch along the lid, see the photos",
                    evidence=["photo:lid-1.jpg", "photo:lid-2.jpg"],
                    at=s.at(3, 1),
                )
            ),
        ),
    )
    s.step(
        t,
        "staff-7",
        lambda: did(
            "message: works fine, keep it?",
            e.handle(
                MessageCase(
                    case_id=cid,
                    party="merchant",
                    text="the kettle works; would 40.00 back and keeping it suit you?",
                    evidence=["chat:20261104-wu"],
                    by="staff-7",
                    at=s.at(3, 4),
                )
            ),
        ),
    )
    s.step(
        t,
        "staff-7",
        lambda: did(
            "offered refund only, 40.00",
            e.handle(
                OfferChange(
                    case_id=cid,
                    type="refund_only",
                    amount="40.00",
                    note="cosmetic scratch; keep the kettle",
                    by="staff-7",
                    at=s.at(3, 5),
                )
            ),
        ),
    )
    s.step(
        t,
        "buyer-wu",
        lambda: did(
            "accepted: refunded 40.00",
            e.handle(AcceptOffer(case_id=cid, at=s.at(3, 9))),
        ),
    )
    return s


def render(story: Story, path: Path, ledger_rows: list[dict[str, Any]]) -> str:
    lines = [f"aftersales demo: a fresh store at {path}", ""]
    current = None
    for step in story.steps:
        if step["story"] != current:
            current = step["story"]
            lines.append(f"== {current}")
        if "refused" in step:
            lines.append(
                f"  {step['who']:<13} refused (exit {step['exit_code']}): {step['refused']}"
            )
            continue
        status = step["status"] or "-"
        extra = f"  due {step['due_at']} -> {step['due_action']}" if step["due_at"] else ""
        money = (
            f"  refunded {step['refunded_amount']}"
            if step.get("refunded_amount") not in (None, "0.00")
            else ""
        )
        lines.append(f"  {step['who']:<13} {step['did']:<48} {status}{money}{extra}")
    lines += ["", "The merchants' money (the ledger projection):"]
    lines += ["  " + line for line in table(ledger_rows, ["merchant_id", *TOTALS]).splitlines()]
    lines += ["", "Look closer:"]
    lines += [
        f"  aftersales --store sqlite:///{path} case list",
        f"  aftersales --store sqlite:///{path} case show {story.cases['phone case colour difference']}",  # noqa: E501
    ]
    return "\n".join(lines)


@click.command("demo")
@click.option(
    "--store-path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Where to create the demo's SQLite file (must not exist yet).",
)
@json_option
def demo(store_path: Path | None, as_json: bool) -> None:
    """Play the article's cases end to end on a fresh SQLite store and show what happened."""
    if store_path is None:
        store_path = Path(tempfile.mkdtemp(prefix="aftersales-demo-")) / "demo.db"
    elif store_path.exists():
        raise click.UsageError(f"{store_path} exists already; the demo wants a fresh store")
    path = store_path.resolve()
    with Engine(f"sqlite:///{path}") as engine:
        story = play(engine)
        finals = {title: engine.get_case(cid) for title, cid in story.cases.items()}
        Projector(engine.store).catch_up(VIEWS)
        money = ledger(engine.store, None, None, None)
    if as_json:
        click.echo(
            to_json(
                {
                    "store": f"sqlite:///{path}",
                    "steps": story.steps,
                    "cases": finals,
                    "ledger": money,
                }
            )
        )
    else:
        click.echo(render(story, path, money))
