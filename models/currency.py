"""Amounts in one reference currency: the features never mix EUR, USD and GBP amounts silently.

Why convert rather than keep features per currency: a card that pays in two currencies is one customer, and
the card's velocity and amount profile must see both; a static, versioned table is enough for that (a few per
cent of daily rate movement is noise beside the amount patterns fraud shows), and it keeps the online and
offline features one computation. The table's version travels with every decision.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path

REFERENCE_CURRENCY = "EUR"  # the packaged table's; a table of one's own may name another


@dataclass(frozen=True)
class Rates:
    version: str
    reference: str
    per_unit: dict[str, float]  # units of the reference currency per unit of each currency

    def to_reference(self, amount: float, currency: str) -> float | None:
        """The amount in the reference currency, or None when the currency is not in the table."""
        rate = self.per_unit.get(currency)
        return None if rate is None else amount * rate


def parse_rates(text: str, source: str) -> Rates:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ValueError(f"rates file {source}: not valid TOML ({error})") from None
    version, reference, per_unit = data.get("version"), data.get("reference"), data.get("per_unit")
    if not isinstance(version, str) or not isinstance(reference, str) or not isinstance(per_unit, dict):
        raise ValueError(f"rates file {source}: needs `version`, `reference` and a [per_unit] table")
    bad = [code for code, rate in per_unit.items()
           if len(code) != 3 or not code.isupper() or not isinstance(rate, int | float) or not rate > 0]
    if bad or per_unit.get(reference) != 1:
        raise ValueError(f"rates file {source}: every rate must be a positive number under an ISO 4217 code and "
                         f"the reference {reference} must be 1 (bad: {bad or [reference]})")
    return Rates(version, reference, {code: float(rate) for code, rate in per_unit.items()})


@cache
def load_rates(path: str = "") -> Rates:
    """The table at `path`, or the packaged one (models/rates/rates.toml) when empty."""
    if not path:
        packaged = resources.files("fraudloop.models").joinpath("rates", "rates.toml")
        return parse_rates(packaged.read_text(), "models/rates")
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"rates file {path} not found")
    return parse_rates(file.read_text(), path)
