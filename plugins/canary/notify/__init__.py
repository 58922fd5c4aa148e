"""Notifications: who is told what, when a rollout starts, decides, waits for a person, ends or is stuck."""
