"""The decision policy: rules compiled once, evaluated in a stated order, first match wins; thresholds from targets;
amounts in one currency."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fraudloop.models.currency import load_rates, parse_rates
from fraudloop.models.features import FEATURE_NAMES
from fraudloop.models.schema import InvalidRecord, parse_transaction
from fraudloop.models.thresholds import Targets, choose, from_tags, table, tags, wilson_lower
from fraudloop.streaming.rules import MODEL, NO_RULES, RulesError, compile_condition, parse
from fraudloop.streaming.rules_file import LOADED, REFUSED, RulesFile

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


def test_the_order_is_allow_block_model_decline_review_model_review_and_the_first_match_wins():
    rules = parse(RULES)
    cards = ["A", "B", "C", "C", "C", "C", "C", "A", "C", "C"]
    terminals = ["T-bad", "T", "T-bad", "T", "T", "T", "T", "T", "T", "T"]
    cols = columns(10, score=[0.99, 0.0, 0.0, 0.5, 0.35, 0.9, 0.1, 0.0, 0.2, 0.4],
                   amount=[5, 5, 5, 500, 0.5, 5, 5, 5, 5, 5], card_mean_amount_30d=[5] * 10,
                   card_tx_count_1h=[9, 0, 0, 0, 9, 9, 0, 0, 9, 0],
                   card_new_terminal_30d=[1, 0, 0, 0, 1, 1, 0, 0, 1, 0])
    outcome, rule = rules.decide(cols, cards, terminals, 0.3, 0.7)
    assert list(zip(outcome, rule, strict=True)) == [
        ("approve", "allow_cards list"),  # allowed card: neither the block list (terminal) nor a score of 0.99 count
        ("decline", "block_cards list"),
        ("decline", "block_terminals list"),
        ("decline", "block big on new terminal"),  # a block rule over the score and features
        ("approve", "allow tiny"),  # allow rules come before the review rule it also matches
        ("decline", MODEL),  # the model's decline (0.9 >= 0.7) is the last block rule: no review rule downgrades it
        ("approve", MODEL),
        ("approve", "allow_cards list"),
        ("review", "review burst"),  # under the model's review threshold, the rule reviews it
        ("review", MODEL),
    ]
    assert rules.names == ["allow_cards list", "allow tiny", "block_cards list", "block_terminals list",
                           "block big on new terminal", MODEL, "review burst"]
    assert rules.decide(columns(0), [], [], 0.3, 0.7) == ([], [])  # an empty batch


def test_no_rules_is_the_model_alone():
    outcome, rule = NO_RULES.decide(columns(3, score=[0.1, 0.3, 0.7]), ["a"] * 3, ["t"] * 3, 0.3, 0.7)
    assert outcome == ["approve", "review", "decline"] and rule == [MODEL] * 3


def test_a_missing_feature_makes_a_condition_unknown_and_an_unknown_condition_never_fires():
    rules = parse('version="v"\n[[rules]]\nname="r"\naction="review"\n'
                  'when="card_seconds_since_prev != 3 or amount / card_mean_amount_1d > 2"')
    cols = columns(3, card_seconds_since_prev=[np.nan, 3, 4], amount=[10, 10, 10], card_mean_amount_1d=[0, 0, 0])
    assert rules.decide(cols, ["c"] * 3, ["t"] * 3, 0.5, 0.9)[1] == [MODEL, MODEL, "r"]  # x / 0 is missing too
    # `not` of unknown is unknown: an allow rule on a new card's missing feature does not override the block list
    allow = parse('version="v"\n[lists]\nblock_cards=["B"]\n[[rules]]\nname="calm"\naction="allow"\n'
                  'when="not (card_amount_to_median_30d > 5)"')
    cols = columns(3, card_amount_to_median_30d=[np.nan, 1, 9])
    assert allow.decide(cols, ["B", "B", "B"], ["t"] * 3, 0.5, 0.9) == (
        ["decline", "approve", "decline"], ["block_cards list", "calm", "block_cards list"])
    # Kleene: true or unknown is true; false and unknown is false
    either = compile_condition("card_seconds_since_prev > 1 or amount > 1")
    both = compile_condition("not (card_seconds_since_prev > 1 and amount > 1)")
    cols = columns(2, card_seconds_since_prev=[np.nan, np.nan], amount=[5, 0])
    assert either(cols)[0] == 1.0 and np.isnan(either(cols)[1]) and np.isnan(both(cols)[0]) and both(cols)[1] == 1.0


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
    ('version = "v"\nrules = 5', "must be an array"),
    ('version = "v"\n[[rules]]\nname = "r"\naction = ["block"]\nwhen = "amount > 1"', "action"),
    ('version = "v"\n[[rules]]\nname = "r"\naction = "review"\nwhen = "amount > 1' + "0" * 400 + '"', "too large"),
    ('version = "v"\n[[rules]]\nname = "r"\naction = "review"\nwhen = "' + "not " * 900 + 'amount"', "too large"),
    ('version = "v"\n[[rules]]\nname = "' + "r" * 200 + '"\naction = "review"\nwhen = "amount > 1"', "at most 128"),
    ('version = "' + "v" * 80 + '"', "at most 64"),
    ('version = "v"\n[[rules]]\nname = "r"\naction = "review"\nwhen = "True > 1"', "is not a number"),
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
    targets = Targets(decline_precision=0.9, review_capacity_per_day=120, review_precision=0.0)
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
    # the reviews' precision floor raises the review threshold above near-zero scores (here to the decline's)
    floored, _ = choose(time, is_fraud, score, Targets(decline_precision=0.9, review_capacity_per_day=120,
                                                       review_precision=0.2))
    band = (score >= floored) & ~declined
    assert floored > review and (floored == decline or is_fraud[band].mean() >= 0.2)
    # no finite score, or nothing at all: nothing declined or reviewed on the model's say
    assert choose(np.array([]), np.array([], dtype=bool), np.array([]), targets) == (1.0, 1.0)
    assert choose(time[:3], is_fraud[:3], np.array([np.nan] * 3), targets) == (1.0, 1.0)
    assert from_tags({}) is None and from_tags({"review_threshold": "0.9", "decline_threshold": "0.1"}) is None


def test_thresholds_when_no_score_is_precise_enough_decline_nothing():
    time, is_fraud = np.arange(1000) * 600.0, np.arange(1000) % 2 == 0
    review, decline = choose(time, is_fraud, np.full(1000, 0.5), Targets(decline_precision=0.9))
    assert decline == 1.0  # 50 % precision never reaches 90 %
    assert review == 1.0  # 1,000 tied scores over 7 days do not fit 700 reviews, and a tie is taken whole
    review, _ = choose(time, is_fraud, np.full(1000, 0.5), Targets(decline_precision=0.9, review_capacity_per_day=150))
    assert review == 0.5  # 50 % of them frauds: above the reviews' precision floor


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


def test_a_redelivery_is_the_same_transaction_after_a_rates_change_and_other_currencies_are_not(tmp_path):
    from fraudloop.models.store import DecisionRow, Store

    first = parse_transaction(GOOD)
    later = parse_transaction(GOOD, parse_rates('version = "r2"\nreference = "EUR"\n[per_unit]\nEUR = 1\nUSD = 0.5',
                                                "r2.toml"))
    assert later.amount_cents != first.amount_cents and later == first  # the same message: not a conflict
    assert parse_transaction({**GOOD, "currency": "EUR", "amount": 95.0}) != first  # 95 EUR is not 100 USD
    store = Store(f"sqlite:///{tmp_path / 'store.db'}")
    store.write([DecisionRow(first, 0.1, "approve", "1", [0.0] * len(FEATURE_NAMES), 1.0)], [])
    stored = store.decisions_for(["t1"])["t1"].tx
    store.close()
    assert stored == first and (stored.currency, stored.original_cents, stored.amount_cents) == (
        "USD", 10_000, first.amount_cents)
