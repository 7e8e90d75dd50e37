"""The decision policy beside the model: allow and block lists, rules over features and the score, thresholds.

Order of evaluation, first match wins (Stripe Radar's order, where the model's own "block at the highest risk"
is the last block rule): the allow lists and allow rules; the block lists, block rules, then the model's decline
threshold; the review rules, then the model's review threshold; else approve. So a review rule never turns a
transaction the model declines into a review, and an allow rule overrides everything. Within a kind, rules
apply in file order.

A rules file is TOML (see examples/rules.toml):

    version = "2026-12-01.1"            # names this set in every decision it makes
    [lists]
    allow_cards = ["C00042"]            # also block_cards, allow_terminals, block_terminals
    [[rules]]
    name = "card testing burst"
    action = "review"                   # allow | block | review
    when = "card_tx_count_1h >= 5 and card_new_terminal_30d"

A condition is an expression over the online features (models/features.py names, `amount` in the reference
currency) and `score`: comparisons (< <= > >= == !=, chained), `and`, `or`, `not`, + - * /, numbers, True and
False; a bare name is true when it is above 0. A feature that is missing (NaN: a card's first transaction has
no previous one) makes what depends on it unknown, `not` included (Kleene's three-valued logic: `x or y` is
true if either is true, `x and y` false if either is false); a rule fires only where its condition is known to
be true. Each condition is compiled once, when the file is loaded, into numpy operations over a whole batch:
nothing is parsed or `eval`-ed per message.
"""

from __future__ import annotations

import ast
import hashlib
import operator
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from fraudloop.models.features import FEATURE_NAMES
from fraudloop.streaming.decide import APPROVE, DECLINE, REVIEW

MODEL = "model"  # the rule name of a decision the model's thresholds made
ACTIONS = {"allow": APPROVE, "block": DECLINE, "review": REVIEW}
NAMES = (*FEATURE_NAMES, "score")
LISTS = ("allow_cards", "allow_terminals", "block_cards", "block_terminals")
MAX_NAME, MAX_VERSION = 128, 64  # what the store's columns hold
MAX_DEPTH, MAX_NODES = 24, 400  # a condition deeper or larger than this is refused (no runaway recursion)

Columns = Mapping[str, np.ndarray]  # name -> one value per transaction of the batch
Condition = Callable[[Columns], np.ndarray]


class RulesError(ValueError):
    """A rules file that cannot be used, with one line saying where and why."""


@dataclass(frozen=True)
class Rule:
    name: str
    action: str  # allow | block | review
    when: str  # the condition as written
    test: Condition = field(repr=False, compare=False)


@dataclass(frozen=True)
class RuleSet:
    version: str
    rules: tuple[Rule, ...] = ()
    allow_cards: frozenset[str] = frozenset()
    allow_terminals: frozenset[str] = frozenset()
    block_cards: frozenset[str] = frozenset()
    block_terminals: frozenset[str] = frozenset()
    digest: str = ""  # sha256 of the file's text: the same version name with other content is told apart

    @property
    def names(self) -> list[str]:
        """Every name a decision can carry, in evaluation order (`model` once, for both its thresholds)."""
        names = [name for name, _, _ in self._steps({}, [], [], 0, 0.0, 0.0)]
        return [name for i, name in enumerate(names) if name != MODEL or MODEL not in names[:i]]

    def decide(self, columns: Columns, card_ids: Sequence[str], terminal_ids: Sequence[str],
               review_threshold: float, decline_threshold: float) -> tuple[list[str], list[str]]:
        """(outcome, rule name) per transaction; `columns` holds the features and `score`."""
        n = len(card_ids)
        outcome = np.full(n, APPROVE, dtype=object)
        rule = np.full(n, MODEL, dtype=object)
        open_ = np.ones(n, dtype=bool)
        for name, result, hits in self._steps(columns, card_ids, terminal_ids, n, review_threshold,
                                              decline_threshold):
            if not open_.any():
                break
            hit = hits() & open_
            if hit.any():
                outcome[hit], rule[hit] = result, name
                open_ &= ~hit
        return outcome.tolist(), rule.tolist()

    def _steps(self, columns: Columns, card_ids: Sequence[str], terminal_ids: Sequence[str], n: int,
               review_threshold: float, decline_threshold: float):
        """(name, outcome, what it hits) in evaluation order; each hit is computed only when reached."""
        def member(values: Sequence[str], members: frozenset[str]) -> Callable[[], np.ndarray]:
            return lambda: np.fromiter((v in members for v in values), dtype=bool, count=n)

        def rule_hits(rule: Rule) -> Callable[[], np.ndarray]:
            return lambda: np.broadcast_to(np.asarray(rule.test(columns)) == 1.0, (n,))  # known true only

        def score_at_least(threshold: float) -> Callable[[], np.ndarray]:
            return lambda: np.asarray(columns["score"], dtype=float) >= threshold

        for action in ("allow", "block", "review"):
            for what, values in (("cards", card_ids), ("terminals", terminal_ids)):
                members = getattr(self, f"{action}_{what}", None)
                if members:
                    yield f"{action}_{what} list", ACTIONS[action], member(values, members)
            for rule in self.rules:
                if rule.action == action:
                    yield rule.name, ACTIONS[action], rule_hits(rule)
            if action == "block":
                yield MODEL, DECLINE, score_at_least(decline_threshold)
            if action == "review":
                yield MODEL, REVIEW, score_at_least(review_threshold)


NO_RULES = RuleSet(version="none")


def parse(text: str, source: str = "rules") -> RuleSet:
    """A rules file's text, checked and compiled; RulesError names the first problem."""
    try:
        data = tomllib.loads(text)
    except (tomllib.TOMLDecodeError, RecursionError) as error:
        raise RulesError(f"{source}: not valid TOML ({error})") from None
    unknown = set(data) - {"version", "lists", "rules"}
    if unknown:
        raise RulesError(f"{source}: unknown key(s) {sorted(unknown)}; expected version, lists, rules")
    version = data.get("version")
    if not isinstance(version, str) or not version.strip() or len(version.strip()) > MAX_VERSION:
        raise RulesError(f"{source}: `version` (a non-empty string of at most {MAX_VERSION} characters naming this "
                         "set) is required")
    lists = data.get("lists", {})
    if not isinstance(lists, dict) or set(lists) - set(LISTS):
        raise RulesError(f"{source}: [lists] may hold only {', '.join(LISTS)}")
    for name, members in lists.items():
        if not isinstance(members, list) or not all(isinstance(m, str) and m for m in members):
            raise RulesError(f"{source}: lists.{name} must be a list of non-empty strings")
    if not isinstance(data.get("rules", []), list):
        raise RulesError(f"{source}: `rules` must be an array of tables ([[rules]])")
    rules, seen = [], set()
    for i, spec in enumerate(data.get("rules", []), 1):
        where = f"{source}: rule {i}"
        if not isinstance(spec, dict) or set(spec) != {"name", "action", "when"}:
            raise RulesError(f"{where}: needs exactly name, action and when")
        name, action, when = spec["name"], spec["action"], spec["when"]
        if (not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME or name in seen or name == MODEL
                or name.endswith(" list")):
            raise RulesError(f"{where}: name {name!r} must be a non-empty string of at most {MAX_NAME} characters, "
                             f"unique, not {MODEL!r} and not ending in ' list'")
        if not isinstance(action, str) or action not in ACTIONS:
            raise RulesError(f"{where} ({name}): action {action!r} is not one of {', '.join(ACTIONS)}")
        if not isinstance(when, str):
            raise RulesError(f"{where} ({name}): `when` must be a string")
        seen.add(name)
        rules.append(Rule(name, action, when, compile_condition(when, f"{where} ({name})")))
    return RuleSet(version.strip(), tuple(rules), *(frozenset(lists.get(name, ())) for name in LISTS),
                   digest=hashlib.sha256(text.encode()).hexdigest())


# -- conditions: a small expression language, compiled to numpy closures ----------------------------------
_COMPARE = {ast.Lt: operator.lt, ast.LtE: operator.le, ast.Gt: operator.gt, ast.GtE: operator.ge,
            ast.Eq: operator.eq, ast.NotEq: operator.ne}
_ARITHMETIC = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


def compile_condition(text: str, where: str = "condition") -> Condition:
    """A condition's text -> a function of the batch's columns giving, per transaction, 1.0 (true), 0.0 (false)
    or NaN (unknown: it depends on a missing feature)."""
    try:
        tree = ast.parse(text.strip(), mode="eval").body
    except (SyntaxError, ValueError, RecursionError, MemoryError) as error:
        raise RulesError(f"{where}: {text!r} is not a valid condition ({getattr(error, 'msg', error)})") from None
    nodes = sum(1 for _ in ast.walk(tree))
    if nodes > MAX_NODES or _depth(tree) > MAX_DEPTH:
        raise RulesError(f"{where}: the condition is too large (at most {MAX_NODES} parts, nested at most "
                         f"{MAX_DEPTH} deep)")
    return _Compiler(where, text).predicate(tree)


def _depth(tree: ast.AST) -> int:
    deepest, stack = 0, [(tree, 1)]
    while stack:  # not recursive: a pathological condition cannot exhaust the stack here
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node))
    return deepest


def _and(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.where((a == 0) | (b == 0), 0.0, np.where(np.isnan(a) | np.isnan(b), np.nan, 1.0))


def _or(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.where((a == 1) | (b == 1), 1.0, np.where(np.isnan(a) | np.isnan(b), np.nan, 0.0))


class _Compiler:
    def __init__(self, where: str, text: str) -> None:
        self.where, self.text = where, text

    def fail(self, why: str) -> RulesError:
        return RulesError(f"{self.where}: {why} in {self.text!r}")

    def predicate(self, node: ast.expr) -> Condition:
        """A node that is true (1.0), false (0.0) or unknown (NaN) per transaction."""
        if isinstance(node, ast.BoolOp):
            parts = [self.predicate(v) for v in node.values]
            combine = _and if isinstance(node.op, ast.And) else _or

            def both(cols: Columns) -> np.ndarray:
                result = parts[0](cols)
                for part in parts[1:]:
                    result = combine(result, part(cols))
                return result
            return both
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            inner = self.predicate(node.operand)
            return lambda cols: 1.0 - inner(cols)  # unknown stays unknown
        if isinstance(node, ast.Compare):
            values = [self.number(node.left), *(self.number(c) for c in node.comparators)]
            ops = []
            for op in node.ops:
                if type(op) not in _COMPARE:
                    raise self.fail(f"the comparison {type(op).__name__} is not supported")
                ops.append(_COMPARE[type(op)])

            def compare(cols: Columns) -> np.ndarray:
                computed = [value(cols) for value in values]
                result = np.asarray(1.0)
                for op, left, right in zip(ops, computed, computed[1:], strict=False):
                    with np.errstate(all="ignore"):
                        known = np.where(np.isnan(left) | np.isnan(right), np.nan, op(left, right).astype(float))
                    result = _and(result, known)
                return result
            return compare
        if isinstance(node, ast.Name):
            column = self.number(node)

            def truthy(cols: Columns) -> np.ndarray:
                values = column(cols)
                return np.where(np.isnan(values), np.nan, (values > 0).astype(float))
            return truthy
        if isinstance(node, ast.Constant) and isinstance(node.value, bool):
            value = float(node.value)
            return lambda cols: np.asarray(value)
        raise self.fail(f"{ast.unparse(node)!r} is not a condition")

    def number(self, node: ast.expr) -> Callable[[Columns], np.ndarray]:
        """A node with a number per transaction."""
        if isinstance(node, ast.Name):
            if node.id not in NAMES:
                raise self.fail(f"unknown name {node.id!r} (known: score and the features {', '.join(FEATURE_NAMES)})")
            name = node.id
            return lambda cols: np.asarray(cols[name], dtype=float)
        if isinstance(node, ast.Constant) and isinstance(node.value, int | float) and not isinstance(node.value, bool):
            try:
                value = float(node.value)
            except OverflowError:
                raise self.fail(f"the number {ast.unparse(node)[:20]}... is too large") from None
            return lambda cols: np.float64(value)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            inner = self.number(node.operand)
            return lambda cols: -inner(cols)
        if isinstance(node, ast.BinOp) and type(node.op) in _ARITHMETIC:
            left, right, op = self.number(node.left), self.number(node.right), _ARITHMETIC[type(node.op)]

            def arithmetic(cols: Columns) -> np.ndarray:
                with np.errstate(all="ignore"):
                    result = np.asarray(op(left(cols), right(cols)), dtype=float)
                return np.where(np.isfinite(result), result, np.nan)  # x / 0 is missing, not infinite
            return arithmetic
        raise self.fail(f"{ast.unparse(node)!r} is not a number (names, numbers and + - * / only)")
