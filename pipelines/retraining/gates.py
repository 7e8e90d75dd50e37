"""Promotion gates: pure rules deciding, on evidence, whether a challenger may replace the champion.

Both models are scored on the same time-ordered holdout that neither trained on. The verdict is one of:
- `insufficient evidence`: the holdout has too few frauds, compromised cards or cards to tell models apart;
  not an error and not worth retrying on the same data (the champion stays);
- `failed`: a floor is missed, or the challenger is not shown to be better than the champion;
- `passed`: every floor is met and the lower bound of the paired bootstrap interval of the AP difference
  (challenger - champion) clears the margin, so noise alone rarely promotes.
Floors stay even with a champion, so a first model, or a champion that has itself decayed, is never the only bar.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
from fraudloop.models.metrics import Difference, achievable_card_precision, evaluate, paired_ap_difference
from fraudloop.models.units import DAY

PASSED, FAILED, INSUFFICIENT = "passed", "failed", "insufficient evidence"


@dataclass(frozen=True)
class Gates:
    # Evidence: below any of these the holdout cannot tell models apart.
    min_frauds: int = 30
    min_fraud_cards: int = 20
    min_cards: int = 100  # clusters of the bootstrap
    # Floors on the challenger alone.
    min_average_precision: float = 0.30
    # CP@100 relative to the best any model could reach on this holdout (few compromised cards a day cap it).
    min_card_precision_share: float = 0.5
    min_recall_at_1pct_fpr: float = 0.25
    # Against the champion: the interval's lower bound of (challenger AP - champion AP) must exceed this.
    average_precision_margin: float = 0.0
    confidence: float = 0.95  # two-sided; the lower bound is then a 97.5 % one-sided bound
    resamples: int = 1000
    card_precision_tolerance: float = 0.05  # the challenger's CP@100 may trail the champion's by at most this
    seed: int = 0


@dataclass(frozen=True)
class Check:
    ok: bool
    text: str
    # "gate": the comparison with the champion; "floor": a bar on the challenger itself; "evidence": failed, it makes
    # the verdict `insufficient evidence`
    kind: str = "gate"


@dataclass(frozen=True)
class Evidence:
    frauds: int
    fraud_cards: int
    cards: int
    days: int


@dataclass(frozen=True)
class Verdict:
    evidence: Evidence
    checks: tuple[Check, ...] = field(default_factory=tuple)
    difference: Difference | None = None
    challenger: dict[str, float] = field(default_factory=dict)
    champion: dict[str, float] | None = None

    @property
    def status(self) -> str:
        if any(check.kind == "evidence" and not check.ok for check in self.checks):
            return INSUFFICIENT
        return PASSED if all(check.ok for check in self.checks) else FAILED

    @property
    def passed(self) -> bool:
        return self.status == PASSED

    @property
    def summary(self) -> str:
        """One line: failed checks first, as a reviewer reads it."""
        ordered = [c.text for c in self.checks if not c.ok] + [c.text for c in self.checks if c.ok]
        return f"{self.status}: " + "; ".join(ordered)


def evidence_of(time: np.ndarray, card_id: np.ndarray, is_fraud: np.ndarray) -> Evidence:
    y = np.asarray(is_fraud, dtype=bool)
    cards = np.asarray(card_id)
    return Evidence(int(y.sum()), len(np.unique(cards[y])), len(np.unique(cards)),
                    len(np.unique(np.asarray(time) // DAY)))


def judge(time: np.ndarray, card_id: np.ndarray, is_fraud: np.ndarray, challenger: np.ndarray,
          champion: np.ndarray | None, gates: Gates = Gates(), floors: bool = True,
          weight: np.ndarray | None = None) -> Verdict:
    """The verdict on the challenger's scores (and the champion's, when there is one) over the same holdout rows.
    `floors` False: the evidence and the paired comparison only (a holdout of verdicts on flagged transactions, where
    floors set for all traffic mean nothing: `with_feedback`). `weight`: a downsampled holdout's row weights, so every
    metric and the paired interval estimate all the traffic (the evidence's frauds and compromised cards are all
    there, as every fraud is kept; its count of cards is of the sample's)."""
    evidence = evidence_of(time, card_id, is_fraud)
    enough = (evidence.frauds >= max(gates.min_frauds, 1), evidence.fraud_cards >= gates.min_fraud_cards,
              evidence.cards >= gates.min_cards)
    checks = [Check(all(enough), f"evidence: {evidence.frauds:,} frauds (min {gates.min_frauds}), "
                                 f"{evidence.fraud_cards:,} compromised cards (min {gates.min_fraud_cards}), "
                                 f"{evidence.cards:,} cards (min {gates.min_cards})", kind="evidence")]
    if evidence.frauds == 0:  # nothing to measure: insufficient whatever the minimums say
        return Verdict(evidence, tuple(checks))
    mine = evaluate(time, card_id, is_fraud, challenger, weight)
    theirs = evaluate(time, card_id, is_fraud, champion, weight) if champion is not None else None

    def floor(metric: str, minimum: float, label: str) -> None:
        value = mine[metric]
        ok = value >= minimum
        checks.append(Check(ok, f"{label} {value:.4f} {'>=' if ok else '<'} floor {minimum:.4f}", kind="floor"))

    if floors:
        floor("average_precision", gates.min_average_precision, "AP")
        best = achievable_card_precision(time, card_id, is_fraud, weight=weight)
        floor("card_precision_at_100", gates.min_card_precision_share * best,
              f"CP@100 (best achievable here {best:.4f} x {gates.min_card_precision_share})")
        floor("recall_at_1pct_fpr", gates.min_recall_at_1pct_fpr, "recall@1%FPR")
    difference = None
    if theirs is None:
        checks.append(Check(True, "no champion to compare with"))
    else:
        difference = paired_ap_difference(is_fraud, challenger, champion, card_id, gates.resamples, gates.confidence,
                                          gates.seed, weight)
        ok = difference.low > gates.average_precision_margin
        checks.append(Check(ok, f"AP difference vs champion {difference} lower bound "
                                f"{'>' if ok else '<='} margin {gates.average_precision_margin:+.4f}"))
        need = theirs["card_precision_at_100"] - gates.card_precision_tolerance
        cp = mine["card_precision_at_100"]
        if floors:  # a floor relative to the champion's
            checks.append(Check(cp >= need, f"CP@100 {cp:.4f} {'>=' if cp >= need else '<'} champion "
                                f"{theirs['card_precision_at_100']:.4f} - {gates.card_precision_tolerance:.4f} "
                                "tolerance", kind="floor"))
    return Verdict(evidence, tuple(checks), difference, mine, theirs)


def judge_feedback(time: np.ndarray, card_id: np.ndarray, is_fraud: np.ndarray, challenger: np.ndarray,
                   champion: np.ndarray, gates: Gates = Gates()) -> Verdict:
    """The verdict on the feedback holdout: the evidence and the paired comparison, without floors (`judge`). Its
    interval is wider (half the error rate), as a challenger now has two holdouts to pass: together they promote a
    challenger no better than the champion at most 2.5 % + 1.25 % of the time (a union bound), under the 5 % the gates
    aim for; the feedback benchmark measures it (`false_promotion_rate`)."""
    stricter = replace(gates, confidence=1 - (1 - gates.confidence) / 2)
    return judge(time, card_id, is_fraud, challenger, champion, stricter, floors=False)


def with_feedback(mature: Verdict, feedback: Verdict | None) -> str:
    """The status of a challenger judged on the mature holdout (all traffic, its labels matured) and on the feedback
    holdout (the newest days' verdicts and cardholders' answers). The feedback holdout can promote a challenger the
    mature one did not show better, so a drift is answered within days instead of after the label maturity; but only
    when every floor holds on all traffic, and on the evidence minimums of the feedback itself."""
    if mature.status != FAILED or feedback is None or feedback.status != PASSED:
        return mature.status
    floors = all(check.ok for check in mature.checks if check.kind in ("floor", "evidence"))
    not_worse = mature.difference is None or mature.difference.high >= 0  # all traffic: not shown worse
    return PASSED if floors and not_worse else FAILED
