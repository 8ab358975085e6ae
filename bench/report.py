"""Medians, the printed table, the ratio lines and their targets."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

NUMERIC = (
    "submit_ms",
    "queue_ms",
    "apply_ms",
    "fetch_ms",
    "e2e_ms",
    "entries_per_s",
    "web_peak_mib",
    "worker_peak_mib",
)
COLUMNS = (
    ("operation", "operation", 9, "<"),
    ("size", "size", 7, ">"),
    ("variant", "variant", 12, "<"),
    ("submit_ms", "submit ms", 10, ">"),
    ("queue_ms", "queue ms", 9, ">"),
    ("apply_ms", "apply ms", 9, ">"),
    ("fetch_ms", "fetch ms", 9, ">"),
    ("e2e_ms", "e2e ms", 10, ">"),
    ("entries_per_s", "entries/s", 10, ">"),
    ("web_peak_mib", "web MiB", 8, ">"),
    ("worker_peak_mib", "worker MiB", 10, ">"),
)


@dataclass
class Row:
    """One operation at one size in one variant: every repetition, and their medians."""

    operation: str
    size: int
    variant: str
    samples: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def median(self, key: str) -> float | None:
        values = [s[key] for s in self.samples if isinstance(s.get(key), int | float)]
        return statistics.median(values) if values else None

    def medians(self) -> dict[str, float | None]:
        return {key: self.median(key) for key in NUMERIC}

    def as_json(self) -> dict[str, Any]:
        return {
            "operation": self.operation,
            "size": self.size,
            "variant": self.variant,
            "median": self.medians(),
            "samples": self.samples,
            "notes": self.notes,
        }


def _cell(value: Any, key: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    if key == "size":
        return f"{value:,}"
    if key == "entries_per_s":
        return f"{value:,.0f}"
    if key.endswith("_mib"):
        return f"{value:,.0f}"
    return f"{value:,.1f}" if value < 100 else f"{value:,.0f}"


def table(rows: Sequence[Row]) -> str:
    header = "  ".join(f"{title:{align}{width}}" for _, title, width, align in COLUMNS)
    lines = [header, "-" * len(header)]
    for row in rows:
        values: dict[str, Any] = {
            "operation": row.operation,
            "size": row.size,
            "variant": row.variant,
            **row.medians(),
        }
        lines.append(
            "  ".join(
                f"{_cell(values[key], key):{align}{width}}" for key, _, width, align in COLUMNS
            )
        )
    return "\n".join(lines)


@dataclass
class Ratio:
    """A measured ratio, with its target when it has one (else informative)."""

    name: str
    value: float | None
    target: str | None = None
    passed: bool | None = None
    detail: str = ""

    @property
    def verdict(self) -> str:
        if self.target is None:
            return ""
        if self.passed is None:
            return "SKIP"
        return "PASS" if self.passed else "FAIL"

    def line(self) -> str:
        value = "n/a" if self.value is None else f"{self.value:,.2f}x"
        target = f"(target {self.target})" if self.target else ""
        parts = [f"{self.name:<52}", f"{value:>9}", f"{target:<18}", f"{self.verdict:<4}"]
        text = "  ".join(parts).rstrip()
        return f"{text}  {self.detail}" if self.detail else text

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "value": self.value,
            "target": self.target,
            "verdict": self.verdict or None,
            "detail": self.detail,
        }


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator <= 0:
        return None
    return numerator / denominator


class Scenario(Protocol):
    """A scenario of its own stack: what it prints, and its rows in the table of ratios."""

    def lines(self) -> list[str]: ...

    def ratios(self) -> list[Ratio]: ...


def print_scenario(scenario: Scenario) -> int:
    """Print a scenario run by itself (`python -m bench.<name>`); its exit status."""
    for line in scenario.lines():
        print(line)
    for found in scenario.ratios():
        print(found.line())
    return 0
