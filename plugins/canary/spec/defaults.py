"""Documented defaults and limits of a rollout spec, in one place.

Every value here can be overridden in the spec; the README's spec reference is generated from
the same numbers.
"""

from __future__ import annotations

#: Airflow connection ids used when a spec names a backend without ``conn_id``.
DEFAULT_CONN_IDS = {
    "serving": "canary_serving_default",
    "metrics": "canary_metrics_default",
    "registry": "canary_registry_default",
    "lock": "canary_lock_default",
}

#: One rollout per endpoint (``concurrency``): a second rollout waits (or is refused) while one runs.
LOCK_ON_BUSY = "wait"
LOCK_MAX_WAIT_S = 3600.0
LOCK_POLL_INTERVAL_S = 30.0
#: A lease not renewed for this long is free again (a crashed Airflow cannot wedge an endpoint).
#: Renewed by every rollout task and every observe poll; the gate extends it over an approval.
LEASE_TTL_S = 3600.0
#: Bounds that catch typos: waiting a week or holding an unrenewed lease for days is a mistake.
MAX_LOCK_WAIT_S = 7 * 24 * 3600.0
MIN_LEASE_TTL_S = 60.0
MAX_LEASE_TTL_S = 24 * 3600.0

#: The whole error budget of the analysis: the probability that a healthy, correctly routed canary is
#: rolled back or halted by any statistical test (every metric and the sample-ratio check together), over
#: the whole rollout. See :mod:`canary.stats.budget` for how it is split.
ALPHA = 0.05
#: The sample-ratio-mismatch check's share of ``ALPHA`` when a spec sets no ``analysis.srm_alpha``:
#: ``min(SRM_ALPHA, SRM_MAX_ALPHA_FRACTION * alpha)``, carved out of alpha (the metrics share the rest).
#: GrowthBook and Eppo also test SRM at 0.001; a router off by 2 points at a 5% share is caught within a
#: few thousand requests (bench/README.md).
SRM_ALPHA = 0.001
SRM_MAX_ALPHA_FRACTION = 0.1
#: Per-segment analysis (``analysis.segments``): the share of every test's level (each metric's and the
#: SRM check's) spent on the segments, split equally among them; the overall test keeps the rest.
SEGMENTS_ALPHA_SHARE = 0.5
#: A segment with a smaller share of a stage's canary requests need not show non-inferiority for the
#: stage to advance (a regression in it still rolls back).
SEGMENT_MIN_SHARE = 0.05
MAX_SEGMENTS = 20
#: The longest ``label_delay`` of a prediction_quality metric (labels later than this: a longer rollout).
MAX_LABEL_DELAY_S = 24 * 3600.0
#: Request attribute names (``analysis.segments.by``, a prediction's ``attributes``): lower case, so that
#: each is also a valid Prometheus label name.
ATTRIBUTE_PATTERN = r"^[a-z][a-z0-9_]{0,31}$"
#: The attribute the embedded serving layer derives from ``X-User-Id`` (``new``/``returning``).
USER_SEGMENT_ATTRIBUTE = "segment"
#: Names of business outcomes sent as feedback (conversion, click, chargeback), and of the ``kpi`` metrics'
#: ``outcome``.
OUTCOME_PATTERN = r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$"
#: How long a rollback (or the teardown) keeps retrying to put all traffic back on stable before its try fails
#: loudly (saying what traffic may be); the task's retries then try again.
RETURN_TO_STABLE_MAX_S = 120.0
#: ``targeting.match``: most attributes one rule tests, and most values per attribute.
MAX_TARGETING_ATTRIBUTES = 8
MAX_TARGETING_VALUES = 20
POLL_INTERVAL_S = 30.0
#: Requests right after a traffic change are skipped (caches, autoscaling, JIT warm-up).
WARMUP_S = 0.0

STAGE_MIN_DURATION_S = 300.0
STAGE_MAX_DURATION_S = 3600.0
STAGE_MIN_REQUESTS = 200

#: Absolute guardrails: roll back whatever stable does.
GUARDRAIL_MAX_ERROR_RATE = 0.05
GUARDRAIL_MIN_REQUESTS = 200

SHADOW_REQUESTS = 200
SHADOW_MIRROR_PERCENT = 100
SHADOW_MAX_DURATION_S = 300.0
#: Margin of the paired error test: the candidate may fail at most this much more often on the same requests.
SHADOW_MAX_ERROR_RATE_INCREASE = 0.01
#: Margin of the paired latency test: the candidate may be slow (above the slow threshold) on at most this
#: much more of the same requests than stable.
SHADOW_MAX_SLOW_SHARE_INCREASE = 0.05
#: The slow threshold is stable's p95 latency over this window of served traffic before the shadow test
#: starts (fixed before the test sees a pair) ...
SHADOW_LATENCY_BASELINE_S = 600.0
#: ... plus this much: a few milliseconds either way is scheduling noise, not the model.
SHADOW_LATENCY_P95_SLACK_MS = 5.0
SHADOW_MIN_PREDICTION_AGREEMENT = 0.9
#: The score-shift test: a pair is shifted when the candidate's score differs from stable's by more than
#: this (scores are probabilities) ...
SHADOW_SCORE_SHIFT = 0.1
#: ... and the candidate passes once shifted-up pairs outnumber shifted-down ones (or the reverse) by at most
#: this share of answered pairs.
SHADOW_MAX_SCORE_SHIFT_IMBALANCE = 0.05
#: The mean-difference test: the candidate's scores may be higher (or lower) than stable's on the same requests
#: by at most this on average (scores are probabilities; the band is ``±`` this). A retrained model of the same
#: population moves its mean score by well under a point, while the score-shift test only counts moves beyond
#: ``score_shift``: a uniform drift of a few points on every request (a miscalibrated model whose classes mostly
#: stay) passes it and is caught here. 0.05 matches the score-shift test's margin and is cheap to show for a
#: healthy candidate: at 200 pairs whose scores differ by 0.1 (root mean square) the bound is about ±0.04.
SHADOW_MAX_MEAN_SCORE_SHIFT = 0.05
#: The mean-difference confidence sequence is tightest when the sum of squared score differences reaches this
#: (500 pairs differing by 0.1): the gamma-exponential mixture's tuning, fixed before any pair.
SHADOW_MEAN_SHIFT_TUNING_V = 5.0
#: Design effect of the sequential McNemar tests' mixture: the candidate alone has the bad outcome twice as
#: often as stable alone.
SHADOW_DESIGN_RATIO = 2.0
#: What a shadow test that reached ``max_duration`` without a conclusion does: ``proceed`` to the canary
#: stages (whose tests decide with live traffic) or ``fail``.
SHADOW_ON_INCONCLUSIVE = "proceed"
#: A shadow look counts the mirrored requests that arrived until this long before it, whose two answers
#: are both final and stored (the local store writes in batches every 0.25 s; answers take milliseconds).
SHADOW_SETTLE_S = 2.0
#: Great Expectations suite run on the candidate's mirrored answers unless ``shadow.expectations`` says
#: otherwise (``[]`` turns output validation off): every successful answer has a score and a label, scores
#: are probabilities, labels are classes of the binary classifier.
SHADOW_EXPECTATIONS = (
    {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "score"}, "rows": "answered"},
    {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "label"}, "rows": "answered"},
    {"type": "expect_column_values_to_be_between", "kwargs": {"column": "score", "min_value": 0.0, "max_value": 1.0}},
    {"type": "expect_column_values_to_be_in_set", "kwargs": {"column": "label", "value_set": [0, 1]}},
)

#: Polling triggers (observe, endpoint lease, serving change, registry watch): the first pause after a
#: failed poll (doubling with each further failure), and the floor of every pause, so nothing can spin.
POLL_BACKOFF_BASE_S = 2.0
POLL_MIN_SLEEP_S = 0.5
#: Consecutive failed metrics polls after which the observe trigger reports HALT instead of retrying.
OBSERVE_MAX_CONSECUTIVE_ERRORS = 5
#: Consecutive failed status checks after which the serving-change trigger gives up.
SERVING_CHANGE_MAX_CONSECUTIVE_ERRORS = 5
#: The registry watcher never gives up; after repeated failures it waits at most this long between polls.
REGISTRY_WATCH_MAX_BACKOFF_S = 600.0

#: The nightly pick-up's time when ``$CANARY_NIGHTLY_CRON`` is not set (02:00 UTC every day).
NIGHTLY_CRON = "0 2 * * *"

#: Every rollout DAG's id is this prefix and the spec's model name (``canary_rollout__churn-demo``).
ROLLOUT_DAG_PREFIX = "canary_rollout__"


def rollout_dag_id(model: str) -> str:
    """Return the id of the rollout DAG of ``model``."""
    return f"{ROLLOUT_DAG_PREFIX}{model}"


#: The ``url_route`` of a run's Rollout tab in the Airflow UI (the plugin's ``external_views``).
RUN_TAB_ROUTE = "rollout"


def rollout_tab_path(dag_id: str, run_id: str) -> str:
    """Return the Airflow UI path of a run's Rollout tab, without the UI's base URL (no leading ``/``)."""
    from urllib.parse import quote

    return f"dags/{quote(dag_id, safe='')}/runs/{quote(run_id, safe='')}/plugin/{RUN_TAB_ROUTE}"


#: Event-driven starts (``schedule.on_registry_event``): what the registry watcher polls for and how often.
REGISTRY_EVENT_WATCH = "new_version"
REGISTRY_EVENT_ALIAS = "challenger"
REGISTRY_EVENT_POLL_INTERVAL_S = 30.0
#: The fastest a watcher may poll a registry.
REGISTRY_EVENT_MIN_POLL_INTERVAL_S = 1.0

#: Upper bounds that catch typos (a 30-day stage is a mistake, not a plan).
MAX_STAGE_DURATION_S = 7 * 24 * 3600.0
MAX_STAGES = 20
#: A spec file larger than this is refused unread (the shipped specs are a few kilobytes).
MAX_SPEC_BYTES = 1024 * 1024
#: Most YAML nodes a spec may hold once its aliases are expanded: a "billion laughs" document (anchors that
#: repeat each other) is refused before anything walks its expansion.
MAX_SPEC_NODES = 100_000

#: CloudWatch metrics backend: the default statistics period (whole periods only; see spec validation).
CLOUDWATCH_PERIOD_S = 60
#: CloudWatch: how long before a window's end its last period is still being published (skipped).
CLOUDWATCH_SETTLE_S = 0.0

#: The registry alias that names the serving version (the MLflow registry's ``champion_alias`` option).
CHAMPION_ALIAS = "champion"

#: Notifications (``notify``): the Airflow connection of each notifier when an entry names none (the
#: providers' own default connection ids).
NOTIFY_CONN_IDS = {
    "http": "http_default",
    "smtp": "smtp_default",
    "sns": "aws_default",
    "slack": "slack_api_default",
}
#: The events an entry is told about when it lists none: the ones a person acts on.
NOTIFY_EVENTS = ("approval_needed", "halted", "rolled_back", "promoted", "failed", "stuck")
#: An HTTP notification that gets no answer within this long is given up (logged; the rollout goes on).
NOTIFY_HTTP_TIMEOUT_S = 10.0
#: The stuck-rollout alert fires when a run is still going this long after its expected end (the sum of
#: its deadlines): at least ``STUCK_MIN_MARGIN_S``, else ``STUCK_MARGIN_FRACTION`` of that sum.
STUCK_MIN_MARGIN_S = 600.0
STUCK_MARGIN_FRACTION = 0.25
#: The watchdog DAG's schedule when ``$CANARY_WATCHDOG_CRON`` is not set (every 5 minutes).
WATCHDOG_CRON = "*/5 * * * *"
#: Poll intervals without a look after which the watchdog calls a stage stalled.
WATCHDOG_MISSED_POLLS = 5
