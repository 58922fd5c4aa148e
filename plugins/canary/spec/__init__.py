"""The rollout spec: its model and validation, durations, and the documented defaults."""
