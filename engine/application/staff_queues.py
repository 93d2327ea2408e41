"""Lists by member of a shop's staff: who has each case is on the case's assignment
(engine/domain/assignment.py), not in the case index, and is listed from the staff projection's
table (projections/staff.py), as far as that has read the log."""

from __future__ import annotations

from typing import Any

# The staff projection's table of who has each case: its name is the engine's, so `case list`
# can filter by it without knowing the projection's code.
ASSIGNEES_TABLE = "proj_staff_cases"


def assignee_filter(member: str) -> tuple[str, list[Any]]:
    """``case list --assignee``'s condition on the case index, and its value."""
    return (
        f"case_id IN (SELECT CAST(case_id AS TEXT) FROM {{t}}{ASSIGNEES_TABLE} WHERE assignee = ?)",
        [member],
    )
