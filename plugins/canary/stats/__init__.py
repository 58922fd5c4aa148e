"""Anytime-valid sequential tests for canary analysis (pure numpy/scipy; never imports Airflow).

Public API::

    from canary.stats import SequentialAnalyzer, SequentialState

:class:`SequentialAnalyzer` implements :class:`canary.policy.analysis.Analyzer`; :class:`SequentialState` is
its JSON-able carry-over state. The building blocks live in :mod:`canary.stats.label` (label
e-processes and rate-ratio confidence sequences for counts), :mod:`canary.stats.msprt` (normal-mixture
mSPRT on mean log-latency), :mod:`canary.stats.distribution` (total-variation confidence sequence for
prediction bins) and :mod:`canary.stats.srm` (sample-ratio mismatch). :mod:`canary.stats.plan` and
:mod:`canary.stats.replay` back the ``canary plan`` and ``canary replay`` commands.
"""

from __future__ import annotations

from canary.stats.analyzer import MetricCarry, SequentialAnalyzer, SequentialState

__all__ = ["MetricCarry", "SequentialAnalyzer", "SequentialState"]
