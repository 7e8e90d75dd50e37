"""Promotion gates: pure rules deciding whether a challenger may replace the champion.

Both models are scored on the same time-ordered holdout that neither trained on. A challenger must
clear absolute floors (so a first model, or a champion that has itself decayed, is never the only bar)
and must not trail the champion by more than the margins.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Gates:
    min_average_precision: float = 0.30
    min_card_precision_at_100: float = 0.0  # depends on how many cards a day there are: set it per deployment
    min_recall_at_1pct_fpr: float = 0.25
    # The challenger's AP must be at least the champion's + this (negative: tolerate a small loss).
    average_precision_margin: float = 0.0
    card_precision_tolerance: float = 0.05  # the challenger's CP@100 may trail the champion's by at most this


@dataclass(frozen=True)
class Check:
    ok: bool
    text: str


@dataclass(frozen=True)
class Verdict:
    checks: tuple[Check, ...] = field(default_factory=tuple)

    @property
    def passed(self) -> bool:
        return all(check.ok for check in self.checks)

    @property
    def summary(self) -> str:
        """One line: failed checks first, as a reviewer reads it."""
        ordered = [c.text for c in self.checks if not c.ok] + [c.text for c in self.checks if c.ok]
        return ("passed: " if self.passed else "failed: ") + "; ".join(ordered)


def judge(challenger: dict[str, float], champion: dict[str, float] | None, gates: Gates = Gates()) -> Verdict:
    """Check the challenger's holdout metrics against the floors and, if there is one, the champion's."""
    checks: list[Check] = []

    def floor(metric: str, minimum: float, label: str) -> None:
        value = challenger[metric]
        ok = value >= minimum
        checks.append(Check(ok, f"{label} {value:.4f} {'>=' if ok else '<'} floor {minimum:.4f}"))

    floor("average_precision", gates.min_average_precision, "AP")
    floor("card_precision_at_100", gates.min_card_precision_at_100, "CP@100")
    floor("recall_at_1pct_fpr", gates.min_recall_at_1pct_fpr, "recall@1%FPR")
    if champion is None:
        checks.append(Check(True, "no champion to compare with"))
    else:
        need = champion["average_precision"] + gates.average_precision_margin
        ap = challenger["average_precision"]
        checks.append(Check(ap >= need, f"AP {ap:.4f} {'>=' if ap >= need else '<'} champion "
                            f"{champion['average_precision']:.4f} {gates.average_precision_margin:+.4f} margin"))
        need = champion["card_precision_at_100"] - gates.card_precision_tolerance
        cp = challenger["card_precision_at_100"]
        checks.append(Check(cp >= need, f"CP@100 {cp:.4f} {'>=' if cp >= need else '<'} champion "
                            f"{champion['card_precision_at_100']:.4f} - {gates.card_precision_tolerance:.4f} "
                            "tolerance"))
    return Verdict(tuple(checks))
