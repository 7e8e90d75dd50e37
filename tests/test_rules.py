"""The decision policy: rules compiled once, evaluated in a stated order, first match wins; thresholds from targets;
amounts in one currency."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models.currency import load_rates, parse_rates
from models.features import FEATURE_NAMES
from models.schema import InvalidRecord, parse_transaction
from models.thresholds import Targets, choose, from_tags, table, tags, wilson_lower
from streaming.rules import MODEL, NO_RULES, RulesError, parse
from streaming.rules_file import LOADED, REFUSED, RulesFile

ROOT = Path(__file__).resolve().parents[1]


def columns(n: int, **values) -> dict[str, np.ndarray]:
    cols = {name: np.zeros(n) for name in FEATURE_NAMES}
    cols["score"] = np.zeros(n)
    cols.update({k: np.asarray(v, dtype=float) for k, v in values.items()})
    return cols


RULES = """
version = "v1"
[lists]
allow_cards = ["A"]
block_cards = ["B"]
block_terminals = ["T-bad"]
[[rules]]
name = "review burst"
action = "review"
when = "card_tx_count_1h >= 5 and card_new_terminal_30d"
[[rules]]
name = "block big on new terminal"
action = "block"
when = "amount > 2 * card_mean_amount_30d + 100 and score >= 0.2"
[[rules]]
name = "allow tiny"
action = "allow"
when = "amount < 1"
"""


def test_the_order_is_allow_block_review_then_the_model_and_the_first_match_wins():
    rules = parse(RULES)
    cards = ["A", "B", "C", "C", "C", "C", "C", "A"]
    terminals = ["T-bad", "T", "T-bad", "T", "T", "T", "T", "T"]
    cols = columns(8, score=[0.99, 0.0, 0.0, 0.5, 0.35, 0.9, 0.1, 0.0],
                   amount=[5, 5, 5, 500, 0.5, 5, 5, 5], card_mean_amount_30d=[5] * 8,
                   card_tx_count_1h=[9, 0, 0, 0, 9, 9, 0, 0], card_new_terminal_30d=[1, 0, 0, 0, 1, 1, 0, 0])
    outcome, rule = rules.decide(cols, cards, terminals, 0.3, 0.7)
    assert list(zip(outcome, rule, strict=True)) == [
        ("approve", "allow_cards list"),  # allowed card: neither the block list (terminal) nor a score of 0.99 count
        ("decline", "block_cards list"),
        ("decline", "block_terminals list"),
        ("decline", "block big on new terminal"),  # a block rule over the score and features
        ("approve", "allow tiny"),  # allow rules come before the review rule it also matches
        ("review", "review burst"),  # a review rule before the model's decline at 0.9
        ("approve", MODEL),
        ("approve", "allow_cards list"),
    ]
    assert rules.names[:3] == ["allow_cards list", "block_cards list", "block_terminals list"]


def test_no_rules_is_the_model_alone():
    outcome, rule = NO_RULES.decide(columns(3, score=[0.1, 0.3, 0.7]), ["a"] * 3, ["t"] * 3, 0.3, 0.7)
    assert outcome == ["approve", "review", "decline"] and rule == [MODEL] * 3


def test_a_missing_feature_makes_every_comparison_false_and_division_by_zero_is_missing():
    rules = parse('version="v"\n[[rules]]\nname="r"\naction="review"\n'
                  'when="card_seconds_since_prev != 3 or amount / card_mean_amount_1d > 2"')
    cols = columns(3, card_seconds_since_prev=[np.nan, 3, 4], amount=[10, 10, 10], card_mean_amount_1d=[0, 0, 0])
    assert rules.decide(cols, ["c"] * 3, ["t"] * 3, 0.5, 0.9)[1] == [MODEL, MODEL, "r"]


@pytest.mark.parametrize(("text", "message"), [
    ('version = "v"\n[[rules]]\nname = "r"\naction = "review"\nwhen = "card_tx_1h >= 5"', "unknown name 'card_tx_1h'"),
    ('version = "v"\n[[rules]]\nname = "r"\naction = "review"\nwhen = "__import__(\'os\').system(\'x\')"',
     "is not a condition"),
    ('version = "v"\n[[rules]]\nname = "r"\naction = "review"\nwhen = "amount.real > 1"', "is not a number"),
    ('version = "v"\n[[rules]]\nname = "r"\naction = "review"\nwhen = "amount >"', "is not a valid condition"),
    ('version = "v"\n[[rules]]\nname = "r"\naction = "review"\nwhen = "amount"', None),
    ('version = "v"\n[[rules]]\nname = "r"\naction = "refuse"\nwhen = "amount > 1"', "action 'refuse'"),
    ('version = "v"\n[[rules]]\nname = "model"\naction = "review"\nwhen = "amount > 1"', "name 'model'"),
    ('[[rules]]\nname = "r"\naction = "review"\nwhen = "amount > 1"', "`version`"),
    ('version = "v"\n[lists]\nallow_card = ["A"]', "[lists] may hold only"),
    ('version = "v"\n[[rules]]\nname = "r"\naction = "review"\nwhen = "amount > 1"\nnote = 1', "exactly name"),
    ('version = "v"\n[[rules', "not valid TOML"),
])
def test_a_bad_rules_file_is_refused_with_one_line_naming_the_problem(text, message):
    if message is None:  # a bare feature is a valid condition: true above 0
        assert parse(text).rules[0].test(columns(2, amount=[0, 3])).tolist() == [False, True]
        return
    with pytest.raises(RulesError, match=message.replace("[", r"\[").replace("(", r"\(")) as error:
        parse(text, "rules.toml")
    assert "\n" not in str(error.value) and str(error.value).startswith("rules.toml")


def test_the_example_rules_file_is_valid():
    rules = parse((ROOT / "examples" / "rules.toml").read_text())
    assert rules.version and len(rules.rules) >= 3


def test_the_rules_file_reloads_a_valid_version_and_refuses_a_bad_one_keeping_the_set_in_force(tmp_path):
    path = tmp_path / "rules.toml"
    path.write_text(RULES)
    source = RulesFile(str(path), check_every=0)
    assert source.current.version == "v1"
    bad = tmp_path / "bad.toml"
    bad.write_text(RULES.replace('version = "v1"', 'version = "v2"').replace("card_tx_count_1h", "nope"))
    bad.replace(path)  # written whole, then renamed over the served file
    assert source.refresh().version == "v1"
    assert source.take_events()[0][:2] == (REFUSED, "v1")
    good = tmp_path / "good.toml"
    good.write_text(RULES.replace('version = "v1"', 'version = "v3"'))
    good.replace(path)
    assert source.refresh().version == "v3" and source.take_events() == [(LOADED, "v3", "")]
    path.unlink()
    assert source.refresh().version == "v3" and source.take_events()[0][0] == REFUSED
    bad.write_text(RULES.replace("card_tx_count_1h", "nope"))
    with pytest.raises(RulesError, match="nope"):
        RulesFile(str(bad))  # at start, a bad file stops the scorer (no set in force to keep)
    with pytest.raises(FileNotFoundError):
        RulesFile(str(tmp_path / "missing.toml"))


def test_thresholds_meet_the_precision_target_and_the_review_capacity():
    rng = np.random.default_rng(0)
    days, n = 10, 50_000
    time = rng.uniform(0, days * 86_400, n)
    is_fraud = rng.random(n) < 0.01
    score = np.clip(np.where(is_fraud, rng.beta(5, 2, n), rng.beta(1, 30, n)), 0, 1)
    targets = Targets(decline_precision=0.9, review_capacity_per_day=120)
    review, decline = choose(time, is_fraud, score, targets)
    declined = score >= decline
    assert is_fraud[declined].mean() >= 0.9 and declined.sum() >= targets.min_declines
    # the lowest such threshold: one more step down breaks the lower bound
    below = np.sort(score[score < decline])[::-1]
    worse = score >= below[0]
    assert wilson_lower(np.array([is_fraud[worse].sum()]), np.array([worse.sum()]), 0.9)[0] < 0.9
    reviews = ((score >= review) & ~declined).sum()
    assert reviews <= 120 * days and ((score >= below[120 * days]) & ~declined).sum() > 120 * days
    rows = table(time, is_fraud, score, [review, decline])
    assert rows[0]["alerts_per_day"] == pytest.approx((score >= review).sum() / days)
    assert rows[1]["precision"] == pytest.approx(is_fraud[declined].mean(), abs=1e-4)
    assert from_tags(tags(review, decline, targets)) == (review, decline)
    assert from_tags({}) is None and from_tags({"review_threshold": "0.9", "decline_threshold": "0.1"}) is None


def test_thresholds_when_no_score_is_precise_enough_decline_nothing():
    time, is_fraud = np.arange(1000) * 600.0, np.arange(1000) % 2 == 0
    review, decline = choose(time, is_fraud, np.full(1000, 0.5), Targets(decline_precision=0.9))
    assert decline == 1.0  # 50 % precision never reaches 90 %
    assert review == 1.0  # 1,000 tied scores over 7 days do not fit 700 reviews, and a tie is taken whole
    review, _ = choose(time, is_fraud, np.full(1000, 0.5), Targets(decline_precision=0.9, review_capacity_per_day=150))
    assert review == 0.5


GOOD = {"schema_version": 1, "transaction_id": "t1", "card_id": "c", "terminal_id": "m",
        "timestamp": "2026-01-01T10:00:00Z", "amount": 100.0, "currency": "USD"}


def test_amounts_are_converted_to_the_reference_currency_and_an_unknown_currency_is_refused(tmp_path):
    rates = load_rates()
    assert parse_transaction({**GOOD, "currency": "EUR"}).amount_cents == 10_000
    assert parse_transaction(GOOD).amount_cents == round(100 * rates.per_unit["USD"] * 100) != 10_000
    with pytest.raises(InvalidRecord, match="currency: 'XTS' is not in the rates table"):
        parse_transaction({**GOOD, "currency": "XTS"})
    own = parse_rates('version = "r2"\nreference = "EUR"\n[per_unit]\nEUR = 1\nXTS = 2.5', "own.toml")
    assert parse_transaction({**GOOD, "currency": "XTS"}, own).amount_cents == 25_000
    with pytest.raises(ValueError, match="reference EUR must be 1"):
        parse_rates('version = "r"\nreference = "EUR"\n[per_unit]\nUSD = 1', "bad.toml")
