"""The rollout history: every rollout, every look of every stage, its events and its reports."""

from canary.history.model import Look, RolloutEvent, RolloutRecord, StartedBy
from canary.history.store import RolloutHistory, default_history_url, open_history

__all__ = ["Look", "RolloutEvent", "RolloutHistory", "RolloutRecord", "StartedBy", "default_history_url",
           "open_history"]
