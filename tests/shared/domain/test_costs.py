from __future__ import annotations

from fractions import Fraction

import pytest

from shared.domain.costs import CurrencyBook, MissingExchangeRate, entry_costs, round_cents

BOOK = CurrencyBook("USD", "EUR", {"EUR": Fraction(5, 4)})


def test_spec_example_costs() -> None:
    costs = entry_costs(120, 2000, "EUR", BOOK)
    assert (costs["cost"], costs["cost_default"], costs["cost_normalized"]) == (4000, 5000, 4000)
    assert (costs["currency"], costs["currency_default"], costs["currency_normalized"]) == (
        "EUR",
        "USD",
        "EUR",
    )
    assert costs["overhead_cost"] == costs["facility_overhead_cost_default"] == 0


def test_overheads_add_to_work_cost() -> None:
    costs = entry_costs(
        60, 2000, "EUR", BOOK, internal_overhead_rate=500, facility_overhead_rate=250
    )
    assert costs["work_cost_default"] == 2500
    assert costs["internal_overhead_cost_default"] == 500
    assert costs["facility_overhead_cost_default"] == 250
    assert costs["overhead_cost_default"] == 750
    assert costs["cost_default"] == 3250
    assert costs["cost"] == 2600  # 3250 USD cents in EUR
    assert costs["internal_overhead_cost"] == 400


def test_rounding_is_half_away_from_zero() -> None:
    assert round_cents(Fraction(5, 2)) == 3
    assert round_cents(Fraction(-5, 2)) == -3
    assert round_cents(Fraction(7, 3)) == 2
    # 1 minute at 10.00/h is 16.67 cents
    assert entry_costs(1, 1000, "USD", BOOK)["cost_default"] == 17


def test_unknown_currency_is_reported() -> None:
    with pytest.raises(MissingExchangeRate) as info:
        entry_costs(60, 1000, "GBP", BOOK)
    assert info.value.currency == "GBP"
