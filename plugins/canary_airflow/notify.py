"""Tell people: send a rollout's notices through Airflow provider notifiers, from the tasks that know.

The spec's ``notify`` entries name a notifier (``http``, ``smtp``, ``sns``, ``slack``), an Airflow
connection and the events they want. The tasks that learn something call one function here:
``validate_request`` (started, or refused), each stage's ``gate`` (stage decided, approval needed,
halted), ``finalize`` (promoted, rolled back, failed). The same calls run under ``airflow dags test`` and in
production: notifiers are called synchronously in the worker (``notifier.notify(context)``, no template
rendering of our text). The stuck-rollout alert is an Airflow Deadline Alert on the rollout DAG
(:func:`stuck_deadline`): the scheduler fires it when a run outlives its spec's deadlines, and its
:class:`~airflow.sdk.AsyncCallback` (:func:`send_stuck_alert`) sends the same way from the triggerer.

A retried task tells no receiver twice: what each call site sent is recorded in the run's history
(a ``notification`` event) and skipped on the next try.

A notification never changes a rollout: any failure (receiver down, bad connection, a bug here) is
logged as a warning naming the event, the notifier and the connection, and the task goes on.
Provider modules are imported only when a notice is sent: DAG files stay cheap to parse.
"""

from __future__ import annotations

import asyncio
import html
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow.configuration import conf

from canary.history.model import RolloutEvent
from canary.notify import messages
from canary.notify.messages import Notice, RunRef
from canary.notify.options import (
    HttpNotifyOptions,
    SlackNotifyOptions,
    SmtpNotifyOptions,
    SnsNotifyOptions,
    option_problems,
)
from canary.notify.stuck import StuckBudget, stuck_budget
from canary.spec import defaults
from canary.spec.model import NotifierKind, NotifyEvent, NotifySpec, RolloutSpec
from canary_airflow.history import record, run_key

if TYPE_CHECKING:
    from airflow.sdk import BaseNotifier, DeadlineAlert

    from canary.history.model import RolloutRecord
    from canary.notify.stuck import Stall
    from canary.policy.decisions import Action, GateResult, Outcome
    from canary.rollout.plan import RolloutPlan

log = logging.getLogger(__name__)
#: The longest error text a warning quotes (a receiver's whole HTML error page helps nobody).
MAX_ERROR_CHARS = 300
#: The history event kind that records which receivers were told (so a retried task tells nobody twice).
NOTIFICATION_EVENT = "notification"
#: The Deadline Alert's name on the rollout DAG.
STUCK_ALERT_NAME = "canary_rollout_stuck"


def base_url() -> str:
    """Return the Airflow UI's URL: ``[api] base_url`` (as Airflow's own log links use it)."""
    return conf.get("api", "base_url", fallback=None) or "http://localhost:8080"


# -- building and sending -------------------------------------------------------------------------------

def _options(entry: NotifySpec) -> Any:
    typed, problems = option_problems(entry.notifier.value, entry.options)
    if typed is None:  # a loaded spec has been checked already
        raise ValueError("; ".join(f"options.{loc}: {msg}" for loc, msg in problems))
    return typed


def email_html(notice: Notice) -> str:
    """Return a notice as a short HTML e-mail body: its lines, then the link."""
    paragraphs = "".join(f"<p>{html.escape(line)}</p>" for line in notice.lines)
    link = html.escape(notice.link, quote=True)
    return f'{paragraphs}<p><a href="{link}">Open the rollout in Airflow</a></p>'


def build_notifier(entry: NotifySpec, notice: Notice) -> BaseNotifier:
    """Return the provider notifier that sends ``notice`` as ``entry`` says (imports the provider)."""
    options, conn_id = _options(entry), entry.effective_conn_id
    if entry.notifier is NotifierKind.HTTP:
        from airflow.providers.http.notifications.http import HttpNotifier

        assert isinstance(options, HttpNotifyOptions)
        return HttpNotifier(http_conn_id=conn_id, endpoint=options.endpoint, method=options.method,
                            json=notice.payload(), headers=dict(options.headers) or None,
                            extra_options={"timeout": defaults.NOTIFY_HTTP_TIMEOUT_S})
    if entry.notifier is NotifierKind.SMTP:
        from airflow.providers.smtp.notifications.smtp import SmtpNotifier

        assert isinstance(options, SmtpNotifyOptions)
        return SmtpNotifier(to=list(options.to), from_email=options.from_email, cc=list(options.cc) or None,
                            subject=notice.subject, html_content=email_html(notice), smtp_conn_id=conn_id)
    if entry.notifier is NotifierKind.SNS:
        from airflow.providers.amazon.aws.notifications.sns import SnsNotifier

        assert isinstance(options, SnsNotifyOptions)
        return SnsNotifier(aws_conn_id=conn_id, target_arn=options.target_arn, region_name=options.region_name,
                           subject=notice.subject[:99], message=f"{notice.subject}\n{notice.text()}")
    if entry.notifier is NotifierKind.SLACK:  # the spec refuses it unless the Slack provider is installed
        from airflow.providers.slack.notifications.slack import SlackNotifier  # type: ignore[import-not-found]

        assert isinstance(options, SlackNotifyOptions)
        return SlackNotifier(slack_conn_id=conn_id, channel=options.channel, text=f"*{notice.subject}*\n"
                                                                                  f"{notice.text()}")
    raise ValueError(f"unknown notifier {entry.notifier!r}")


def _secrets(conn_id: str) -> list[str]:
    """Return the connection's password and string extras: never quoted in a warning."""
    try:
        from airflow.sdk import BaseHook

        connection = BaseHook.get_connection(conn_id)
    except Exception:
        return []
    extra = connection.extra_dejson if isinstance(getattr(connection, "extra_dejson", None), dict) else {}
    found = [connection.password or "", *(v for v in extra.values() if isinstance(v, str))]
    return [s for s in found if len(s) >= 4]


def describe_error(err: BaseException, conn_id: str) -> str:
    """Return ``err`` as one short line, without the connection's secrets."""
    text = f"{type(err).__name__}: {err}".replace("\n", " ")
    for secret in _secrets(conn_id):
        text = text.replace(secret, "***")
    return text if len(text) <= MAX_ERROR_CHARS else text[:MAX_ERROR_CHARS - 1] + "…"


def send(notice: Notice, entries: Sequence[NotifySpec], context: Any, *, log: Any = log) -> list[str]:
    """Send ``notice`` to every entry that wants one of its events; return ``notifier:conn_id`` of those sent.

    Never raises: a notifier that fails is logged as a warning (event, notifier, connection, error).

    :param notice: what to tell.
    :param entries: the spec's ``notify`` entries.
    :param context: the task's context (or the deadline callback's), handed to each notifier.
    :param log: where warnings go (a task passes its own logger).
    """
    sent = []
    for entry in entries:
        if not entry.wants(notice.events):
            continue
        what = f"{entry.notifier.value} notifier (connection {entry.effective_conn_id!r})"
        try:
            build_notifier(entry, notice).notify(context)
        except Exception as err:  # never let telling people change what happened
            log.warning("notification %r not sent by the %s: %s", notice.event.value, what,
                        describe_error(err, entry.effective_conn_id))
            continue
        log.info("notified %r via the %s: %s", notice.event.value, what, notice.subject)
        sent.append(receiver_of(entry))
    return sent


def _run_ref(context: Any, plan: RolloutPlan) -> RunRef:
    return RunRef(model=plan.model, dag_id=context["dag"].dag_id, run_id=context["run_id"], base_url=base_url(),
                  candidate=plan.candidate, stable=plan.stable, dry_run=plan.dry_run)


def receiver_of(entry: NotifySpec) -> str:
    """Return ``notifier:conn_id``: who an entry tells (the unit of what was sent)."""
    return f"{entry.notifier.value}:{entry.effective_conn_id}"


def _already_sent(run: tuple[str, str], key: str, logger: Any) -> set[str]:
    """Return the receivers an earlier try told about ``key`` in ``run`` (per the run's history)."""
    dag_id, run_id = run
    found = record(f"the notifications sent for {key}",
                   lambda h: [e for e in h.events(dag_id, run_id) if e.kind == NOTIFICATION_EVENT and e.key == key],
                   logger)
    return {str(r) for event in found or () for r in event.data.get("sent", ())}


def _guarded(what: str, logger: Any, build: Callable[[], Notice], entries: Sequence[NotifySpec],
             context: Any, *, key: str, run: tuple[str, str] | None = None) -> list[str]:
    """Build a notice and send it once per receiver and run; a failure to build one is a warning too.

    A retried task (or a task cleared and run again) does not tell a receiver twice: what was sent is
    recorded in the run's history as a ``notification`` event under ``key`` (e.g. ``stage_2/halted``),
    and receivers found there are skipped. A receiver that failed is tried again by the next try. If the
    history cannot be read, the notice is sent (at least once beats at most once for an alert).

    :param key: what the notice is about within the run; with its event, one notice per run.
    :param run: ``(dag_id, run_id)`` the notice is about; default: the task's own run.
    """
    if not entries:
        return []
    try:
        notice = build()
    except Exception as err:
        logger.warning("no %s notification: could not word it (%s: %s)", what, type(err).__name__, err)
        return []
    key = f"{key}/{notice.event.value}"
    wanted = [e for e in entries if e.wants(notice.events)]
    if not wanted:
        return []
    run = run or run_key(context)
    already = _already_sent(run, key, logger)
    todo = [e for e in wanted if receiver_of(e) not in already]
    if len(todo) < len(wanted):
        logger.info("notification %r already sent by an earlier try to %s: not sent again", notice.event.value,
                    ", ".join(sorted(receiver_of(e) for e in wanted if receiver_of(e) in already)))
    sent = send(notice, todo, context, log=logger)
    if sent:
        event = RolloutEvent(dag_id=run[0], run_id=run[1], at_s=time.time(), kind=NOTIFICATION_EVENT, key=key,
                             data={"event": notice.event.value, "subject": notice.subject,
                                   "sent": sorted(already | set(sent))})
        record(f"the notification event {key}", lambda h: h.add_event(event), logger)
    return sent


# -- the call sites (one line each in the operators) ----------------------------------------------------

def rollout_started(context: Any, plan: RolloutPlan, *, log: Any = log) -> list[str]:
    """``validate_request`` froze the plan."""
    return _guarded("started", log, lambda: messages.started(_run_ref(context, plan),
                                                             [s.weight for s in plan.stages], reason=plan.reason),
                    plan.spec.notify, context, key="started")


def rollout_refused(context: Any, spec_path: str, reason: Any, *, log: Any = log) -> list[str]:
    """``validate_request`` refused the run (a spec that does not load names no one to tell)."""
    from canary.errors import SpecError
    from canary.spec.model import load_spec

    try:
        spec = load_spec(spec_path)
    except (SpecError, OSError):
        return []
    run_conf = getattr(context.get("dag_run"), "conf", None) or {}
    ref = RunRef(model=spec.model, dag_id=context["dag"].dag_id, run_id=context["run_id"], base_url=base_url(),
                 candidate=run_conf.get("version") or None)
    return _guarded("refused", log, lambda: messages.refused(ref, str(reason)), spec.notify, context,
                    key="refused")


def stage_decided(context: Any, plan: RolloutPlan, stage_index: int, result: GateResult, action: Action, why: str,
                  *, log: Any = log) -> list[str]:
    """A stage's gate chose the next step."""
    return _guarded("gate", log, lambda: messages.gate_decided(
        _run_ref(context, plan), stage_index=stage_index, stage_count=len(plan.stages),
        weight_pct=plan.stages[stage_index].weight, result=result, action=action, why=why),
        plan.spec.notify, context, key=f"stage_{stage_index + 1}")


def rollout_finished(context: Any, plan: RolloutPlan, outcome: Outcome, reason: str, *, log: Any = log) -> list[str]:
    """``finalize`` settled the run."""
    return _guarded("outcome", log, lambda: messages.finished(_run_ref(context, plan), outcome, reason),
                    plan.spec.notify, context, key="outcome")


def rollout_stalled(context: Any, record: RolloutRecord, spec: RolloutSpec, stall: Stall, *,
                    log: Any = log) -> list[str]:
    """The watchdog found a stage of ``record``'s run without progress (once per run, stage and kind).

    :param context: the watchdog task's context (handed to the notifiers).
    """
    ref = RunRef(model=record.model, dag_id=record.dag_id, run_id=record.run_id, base_url=base_url(),
                 candidate=record.candidate, stable=record.stable, dry_run=record.dry_run)
    return _guarded("stalled", log, lambda: messages.stalled(ref, stall), spec.notify, context, key=stall.key,
                    run=(record.dag_id, record.run_id))


# -- the stuck-rollout alert ----------------------------------------------------------------------------

def stuck_deadline(spec: RolloutSpec) -> DeadlineAlert | None:
    """Return the rollout DAG's Deadline Alert: fires when a run is still going past its spec's budget.

    None when no ``notify`` entry wants ``stuck``. The budget is measured from when the run was queued.
    The callback's kwargs (JSON, stored in the serialized DAG) carry only the entries that want ``stuck``.

    :param spec: the rollout's spec.
    """
    entries = [e for e in spec.notify if e.wants((NotifyEvent.STUCK,))]
    if not entries:
        return None
    from airflow.sdk import AsyncCallback, DeadlineAlert, DeadlineReference

    budget = stuck_budget(spec)
    return DeadlineAlert(
        reference=DeadlineReference.DAGRUN_QUEUED_AT, interval=timedelta(seconds=budget.total_s),
        name=STUCK_ALERT_NAME,
        callback=AsyncCallback(send_stuck_alert, kwargs={
            "model": spec.model, "notify": [e.model_dump(mode="json", by_alias=True) for e in entries],
            "budget": {"lock_wait_s": budget.lock_wait_s, "shadow_s": budget.shadow_s,
                       "stages_s": budget.stages_s, "margin_s": budget.margin_s}}))


def stuck_notice(model: str, budget: Mapping[str, float], context: Mapping[str, Any] | None) -> Notice:
    """Return the stuck notice of the run the deadline's ``context`` names (``dag_run`` as the API returns it)."""
    dag_run = dict((context or {}).get("dag_run") or {})
    ref = RunRef(model=model, dag_id=str(dag_run.get("dag_id") or defaults.rollout_dag_id(model)),
                 run_id=str(dag_run.get("dag_run_id") or dag_run.get("run_id") or ""), base_url=base_url(),
                 candidate=(dag_run.get("conf") or {}).get("version"),
                 dry_run=bool((dag_run.get("conf") or {}).get("dry_run")))
    return messages.stuck(ref, StuckBudget(**budget))


async def send_stuck_alert(*, model: str, notify: list[dict[str, Any]], budget: dict[str, float],
                           context: dict[str, Any] | None = None) -> list[str]:
    """The Deadline Alert's callback (runs in the triggerer): send the ``stuck`` notice.

    The provider notifiers are called synchronously in a thread, as in the tasks (the triggerer answers
    connection look-ups from other threads). Never raises.
    """
    try:
        entries = [NotifySpec.model_validate(e) for e in notify]
        notice = stuck_notice(model, budget, context)
    except Exception as err:
        log.warning("no stuck notification for %s: %s: %s", model, type(err).__name__, err)
        return []
    return await asyncio.to_thread(send, notice, entries, dict(context or {}))


__all__ = ["NOTIFICATION_EVENT", "base_url", "build_notifier", "describe_error", "email_html", "receiver_of",
           "rollout_finished", "rollout_refused", "rollout_stalled", "rollout_started", "send", "send_stuck_alert",
           "stage_decided", "stuck_deadline", "stuck_notice"]
