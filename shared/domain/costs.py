"""Cost of tracked time, in cents, in the person's, the default and the reporting currency."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction


class MissingExchangeRate(LookupError):
    def __init__(self, currency: str) -> None:
        super().__init__(currency)
        self.currency = currency


@dataclass(frozen=True)
class CurrencyBook:
    """An organization's currencies; `rates` maps a currency to its worth in the default one."""

    default: str
    reporting: str
    rates: Mapping[str, Fraction]

    def rate(self, currency: str) -> Fraction:
        if currency == self.default:
            return Fraction(1)
        try:
            return self.rates[currency]
        except KeyError:
            raise MissingExchangeRate(currency) from None


def round_cents(value: Fraction) -> int:
    """Round half away from zero, as accountants do."""
    sign = -1 if value < 0 else 1
    return sign * int((abs(value) + Fraction(1, 2)) // 1)


def entry_costs(
    minutes: int,
    rate_cents: int,
    rate_currency: str,
    book: CurrencyBook,
    *,
    internal_overhead_rate: int = 0,
    facility_overhead_rate: int = 0,
) -> dict[str, int | str]:
    """All currency and cost attributes of an entry of `minutes` by a person of the given rate.

    Work cost is in the person's currency; overhead rates are per hour in the default currency.
    Each figure is converted from the exact value, then rounded once.
    """
    hours = Fraction(minutes, 60)
    to_default = book.rate(rate_currency)
    reporting_rate = book.rate(book.reporting)
    work_default = hours * rate_cents * to_default
    internal_default = hours * internal_overhead_rate
    facility_default = hours * facility_overhead_rate

    def triple(default_value: Fraction) -> tuple[int, int, int]:
        return (
            round_cents(default_value / to_default),
            round_cents(default_value),
            round_cents(default_value / reporting_rate),
        )

    work = triple(work_default)
    internal = triple(internal_default)
    facility = triple(facility_default)
    overhead = triple(internal_default + facility_default)
    total = triple(work_default + internal_default + facility_default)
    values: dict[str, int | str] = {
        "currency": rate_currency,
        "currency_default": book.default,
        "currency_normalized": book.reporting,
    }
    for prefix, figures in (
        ("cost", total),
        ("work_cost", work),
        ("overhead_cost", overhead),
        ("internal_overhead_cost", internal),
        ("facility_overhead_cost", facility),
    ):
        values[prefix], values[f"{prefix}_default"], values[f"{prefix}_normalized"] = figures
    return values
