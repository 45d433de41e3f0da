"""The fault suite's figures: one row per fault (and the load test's figures), collected while the tests run
and printed at the end of the session by ``tests/faults/conftest.py`` — so CI output always shows them."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class FaultRow:
    """What one fault did: the slowest answer against the deadline, what the log says, what was lost."""

    fault: str
    deadline_ms: int
    answered_ms: float
    expected_class: str
    logged_classes: list[str]
    breaker: str
    lost_rows: int
    lost_images: int
    notes: str = ""

    @property
    def in_deadline(self) -> bool:
        return self.answered_ms <= self.deadline_ms + SLACK_MS

    @property
    def class_ok(self) -> bool:
        return self.expected_class == "-" or self.expected_class in self.logged_classes


@dataclass
class LoadFigures:
    """The load test's figures."""

    requests: int
    deadline_ms: int
    answered: int
    successes: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    wall_s: float
    request_rows: int
    attempt_rows: int
    attempts_reported: int
    locked_errors: int
    #: The server's own slowest answer (its request log's ``elapsedMs``, from the request's arrival): apart from
    #: the client's ``max_ms``, it tells a late server from a client that read late.
    server_max_ms: float = 0.0
    #: The client process's longest event-loop stall: a client that read late, not a late server.
    client_stall_ms: float = 0.0
    #: The server's longest event-loop stall its log reported (0: none of 250 ms or more).
    server_stall_ms: float = 0.0
    notes: list[str] = field(default_factory=list)


#: Real-time slack allowed past a deadline.
SLACK_MS = 50
ROWS: list[FaultRow] = []
LOAD: list[LoadFigures] = []


def record(row: FaultRow) -> FaultRow:
    """Keep ``row`` for the table, and return it for the test's own assertions."""
    ROWS.append(row)
    return row


def fault_table() -> str:
    """Markdown table: fault × answered by the deadline × failure class logged × breaker × lost rows/images."""
    lines = [
        "| fault | deadline | answered in | in deadline | failure class logged | breaker | lost rows | lost images |",
        "|---|---:|---:|:---:|---|---|---:|---:|",
    ]
    for r in ROWS:
        logged = ", ".join(r.logged_classes) or "-"
        if not r.class_ok:
            logged += f" (want {r.expected_class})"
        name = f"{r.fault} ({r.notes})" if r.notes else r.fault
        lines.append(
            f"| {name} | {r.deadline_ms} ms | {r.answered_ms:.0f} ms | {'yes' if r.in_deadline else 'NO'} | "
            f"{logged} | {r.breaker} | {r.lost_rows} | {r.lost_images} |"
        )
    return "\n".join(lines)


def load_table() -> str:
    """The load figures as a markdown table."""
    lines = [
        "| requests | deadline | answered | p50 | p99 | max | server's max | log rows (requests / attempts) "
        "| 'locked' errors | stalls: client / server |"
    ]
    lines.append("|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|")
    for f in LOAD:
        lines.append(
            f"| {f.requests} concurrent | {f.deadline_ms} ms | {f.answered} ({f.successes} with an image) | "
            f"{f.p50_ms:.0f} ms | {f.p99_ms:.0f} ms | {f.max_ms:.0f} ms | {f.server_max_ms:.0f} ms | "
            f"{f.request_rows} / {f.attempt_rows} (expected {f.requests} / {f.attempts_reported}) | "
            f"{f.locked_errors} | {f.client_stall_ms:.0f} / {f.server_stall_ms:.0f} ms |"
        )
    return "\n".join(lines)
