"""The review queue page (`fraudloop review`): analysts work the cases the scorer sent to review.

A transaction decided `review` is a case. The page lists the open ones (no verdict yet, younger than the expiry)
by priority, the highest score first, each with its score, reasons, the rule that decided, its feature values
and the card's recent history, and two buttons. A verdict is published to the labels topic as a label of source
`review`, with the analyst and the time, so it reaches the store (and the next training set) the way every
outcome does: through the scorer. Nothing here writes to the store.

Who gave the verdict: the user an authenticating proxy in front of the page names (`X-Forwarded-User`, or
`X-Remote-User`; trusted only with `review_trust_proxy_user`), else the name typed on the page. A verdict on a
case that is not open (worked, expired, never reviewed) is refused, as is a form posted from another site. The
queue's numbers are Prometheus metrics at /metrics, read from the store when scraped: the page keeps no state of
its own beyond the verdicts it has just sent.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from urllib.parse import unquote

import orjson
from flask import Flask, Response, abort, redirect, render_template_string, request, url_for
from fraudloop.models.features import FEATURE_NAMES
from fraudloop.models.schema import Label, format_time, label_record
from fraudloop.models.store import Store
from fraudloop.models.units import DAY, HOUR
from fraudloop.streaming.config import ScorerConfig
from fraudloop.streaming.event_time import WALL
from fraudloop.streaming.review_queue import queue_summary
from kafka.errors import KafkaError
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily

ANALYST_HEADERS = ("X-Forwarded-User", "X-Remote-User")
VERDICTS = {"fraud": True, "genuine": False}

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Review queue · fraudloop</title>
<style>
 body { font: 14px system-ui, sans-serif; margin: 1.5rem; color: #222; }
 table { border-collapse: collapse; margin: .4rem 0; } td, th { border: 1px solid #ccc; padding: .2rem .5rem; }
 th { background: #f3f3f3; text-align: left; } .case { border: 1px solid #bbb; border-radius: 6px; padding: .6rem;
 margin: .8rem 0; } .fraud { background: #b3261e; color: white; } .genuine { background: #1e6b2e; color: white; }
 button { padding: .3rem 1rem; border: 0; border-radius: 4px; cursor: pointer; } .note { color: #555; }
</style></head><body>
<h1>Review queue</h1>
<p class="note">{{ open }} open case{{ "" if open == 1 else "s" }}, the first {{ shown }} shown (cases expire
{{ expiry_hours }} h after their transaction; clock: {{ clock }}, now {{ now_text }}).
{{ sent }} verdict{{ "" if sent == 1 else "s" }} sent from this page on their way to the store.</p>
{% if message %}<p role="status"><strong>{{ message }}</strong></p>{% endif %}
{% if not proxy_user %}
<p><label>Analyst <input form="none" id="analyst" name="analyst" value="{{ analyst }}" required
  placeholder="your name"></label></p>
{% else %}<p>Analyst: <strong>{{ proxy_user }}</strong></p>{% endif %}
{% for case in cases %}
<section class="case" data-transaction="{{ case.transaction_id }}">
 <h2>#{{ loop.index }} · {{ case.transaction_id }} · score {{ "%.3f"|format(case.score) }}</h2>
 <p>card {{ case.card_id }} at terminal {{ case.terminal_id }}, {{ case.amount }} {{ case.currency }},
  {{ case.time }}; decided by <strong>{{ case.rule }}</strong> (model v{{ case.model_version }},
  rules {{ case.rules_version }}), {{ case.age }} in the queue.</p>
 <p>Reasons: {% for r in case.reasons %}<span>{{ r }}</span>{% if not loop.last %}; {% endif %}
  {% else %}none recorded (a review decided while the scorer shed optional work){% endfor %}</p>
 <details><summary>Features</summary><table>
  {% for name, value in case.features %}<tr><th>{{ name }}</th><td>{{ value }}</td></tr>{% endfor %}</table>
 </details>
 <details open><summary>The card's recent history</summary><table>
  <tr><th>time</th><th>transaction</th><th>terminal</th><th>amount</th><th>score</th><th>decision</th>
   <th>outcome</th></tr>
  {% for h in case.history %}<tr><td>{{ h.time }}</td><td>{{ h.transaction_id }}</td><td>{{ h.terminal_id }}</td>
   <td>{{ h.amount }}</td><td>{{ h.score }}</td><td>{{ h.decision }}</td><td>{{ h.outcome }}</td></tr>
  {% else %}<tr><td colspan="7">no earlier transaction of this card in the store</td></tr>{% endfor %}
 </table></details>
 <form method="post" action="{{ url_for('verdict', transaction_id=case.transaction_id) }}"
  onsubmit="var a=document.getElementById('analyst'); if (a) { if (!a.reportValidity()) return false;
   this.analyst.value=a.value; document.cookie='analyst='+encodeURIComponent(a.value)+';path=/;SameSite=Strict'; }">
  <input type="hidden" name="analyst" value="">
  <button class="fraud" name="verdict" value="fraud">Fraud</button>
  <button class="genuine" name="verdict" value="genuine">Genuine</button>
 </form>
</section>
{% else %}<p>No open case.</p>{% endfor %}
</body></html>"""


def create_app(config: ScorerConfig, limit: int = 50, producer=None, clock: Callable[[], float] | None = None) -> Flask:
    """The page over the scorer's store and labels topic (`config`'s). `producer`: a KafkaProducer (default: one
    made from `config` at the first verdict, as the scorer's); `clock`: now in epoch seconds (default: the wall
    clock, or the newest stored transaction's time when config.event_clock is `stream`, for a replayed or simulated
    stream)."""
    from fraudloop.streaming.service import new_producer

    store = Store(config.store_url)
    if clock is None:
        clock = time.time if config.event_clock == WALL else lambda: store.newest_event_time() or time.time()
    expiry_hours = config.review_expiry_hours
    expiry = expiry_hours * HOUR
    sent: set[str] = set()  # verdicts published, until the store has them
    kafka = {"producer": producer}  # made at the first verdict: the queue can be read while Kafka is down
    app = Flask("fraudloop.review")

    def proxy_user() -> str:
        if not config.review_trust_proxy_user:
            return ""
        return next((request.headers[h].strip() for h in ANALYST_HEADERS if request.headers.get(h, "").strip()), "")

    @app.get("/")
    def queue() -> str:
        now = clock()
        cases = store.review_cases(now, expiry, limit + len(sent))
        sent.intersection_update(cases["transaction_id"])  # those the store has now are no longer open there
        cases = cases[~cases["transaction_id"].isin(sent)].head(limit)
        return render_template_string(PAGE, cases=[_case(store, row, now) for row in cases.itertuples()],
                                      shown=len(cases), open=store.open_case_count(now, expiry) - len(sent),
                                      expiry_hours=f"{expiry_hours:g}", clock=config.event_clock,
                                      now_text=format_time(now), sent=len(sent), message=request.args.get("message"),
                                      analyst=unquote(request.cookies.get("analyst", "")), proxy_user=proxy_user())

    @app.post("/cases/<path:transaction_id>/verdict")
    def verdict(transaction_id: str) -> Response:
        origin = request.headers.get("Origin")
        if origin and origin != request.host_url.rstrip("/"):
            abort(403, "a verdict is accepted from this page only")  # another site's form posting here
        choice = request.form.get("verdict", "")
        analyst = proxy_user() or request.form.get("analyst", "").strip()
        if choice not in VERDICTS:
            abort(400, f"verdict must be one of {sorted(VERDICTS)}, got {choice!r}")
        if not analyst:
            abort(400, "say who you are: type your name in the Analyst field (or sign in through the proxy)")
        if len(analyst) > 128:
            abort(400, "the analyst's name is longer than 128 characters")
        now = clock()
        if transaction_id in sent or not store.open_case_count(now, expiry, transaction_id):
            abort(409, f"{transaction_id} is not an open case (worked already, expired, or never sent to review)")
        sent.add(transaction_id)
        label = Label(transaction_id, VERDICTS[choice], now, "review", analyst)
        try:
            kafka["producer"] = kafka["producer"] or new_producer(config)
            # the analyst sees "sent" only once the broker has it
            kafka["producer"].send(config.labels_topic, key=transaction_id.encode(),
                                   value=orjson.dumps(label_record(label))).get(timeout=10)
        except KafkaError as error:
            sent.discard(transaction_id)
            abort(503, f"the verdict on {transaction_id} was not sent ({error}): try again")
        return redirect(url_for("queue", message=f"{transaction_id}: {choice}, by {analyst}"))

    @app.get("/metrics")
    def metrics() -> Response:
        registry = CollectorRegistry()
        registry.register(_QueueMetrics(store, clock, expiry))
        return Response(generate_latest(registry), mimetype="text/plain; version=0.0.4")

    return app


def _case(store: Store, row, now: float) -> dict:
    features = orjson.loads(row.features)
    original = row.original_amount_cents  # the message's own amount (NaN: stored in the reference currency)
    cents = row.amount_cents if original is None or original != original else original
    reasons = orjson.loads(row.reasons) if row.reasons else []
    history = store.card_history(row.card_id, row.event_time)
    return {
        "transaction_id": row.transaction_id, "card_id": row.card_id, "terminal_id": row.terminal_id,
        "score": row.score, "rule": row.rule or "model", "model_version": row.model_version,
        "rules_version": row.rules_version or "none", "time": format_time(row.event_time),
        "amount": f"{cents / 100:.2f}",
        "currency": row.currency or "",
        "age": f"{(now - row.event_time) / HOUR:.1f} h",
        "reasons": [_reason(r) for r in reasons],
        "features": [(name, "missing" if value is None else f"{value:.4g}")
                     for name, value in zip(FEATURE_NAMES, features, strict=False)],
        "history": [{"time": format_time(h.event_time), "transaction_id": h.transaction_id,
                     "terminal_id": h.terminal_id, "amount": f"{h.amount_cents / 100:.2f}",
                     "score": "-" if h.score != h.score or h.score is None else f"{h.score:.3f}",
                     "decision": h.decision,
                     "outcome": "unknown" if h.is_fraud != h.is_fraud or h.is_fraud is None else
                     f"{'fraud' if h.is_fraud else 'genuine'} ({h.source or 'chargeback'})"}
                    for h in history.itertuples()],
    }


def _reason(reason: dict) -> str:
    if "feature" in reason:
        return f"{reason['feature']} = {reason.get('value')} ({reason.get('contribution', 0):+.3f})"
    return ", ".join(f"{k} {v}" for k, v in reason.items())


class _QueueMetrics:
    """The queue as the store holds it, when Prometheus scrapes: open cases, and over the last day cases queued,
    worked and expired and the median hours to a verdict."""

    def __init__(self, store: Store, clock: Callable[[], float], expiry: float) -> None:
        self.store, self.clock, self.expiry = store, clock, expiry

    def collect(self):
        now = self.clock()
        open_ = GaugeMetricFamily("fraud_review_queue_open", "Open review cases (no verdict, not expired)")
        open_.add_metric([], float(self.store.open_case_count(now, self.expiry)))
        yield open_
        end = now + 1  # the last day, this second included (a verdict just given is known at `now`)
        reviews, verdicts = self.store.review_log(end - DAY - self.expiry, end)  # cases whose fate fell in the day
        day = queue_summary(reviews, verdicts, end - DAY, end, self.expiry / HOUR)
        for key, help_text in (("queued_per_day", "Transactions sent to review in the last day"),
                               ("worked_per_day", "Review verdicts given in the last day"),
                               ("expired_per_day", "Review cases that expired unworked in the last day"),
                               ("verdict_latency_hours_p50", "Median hours from a transaction to its verdict, "
                                                             "cases of the last day")):
            family = GaugeMetricFamily(f"fraud_review_{key}", help_text)
            family.add_metric([], day[key])
            yield family
