"""Decisions as pure functions: the decision enums, evidence values, the analyzer interface, the gate."""
