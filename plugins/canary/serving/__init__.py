"""Embedded serving layer: model endpoints with weighted, sticky traffic splits, mirroring and fault injection.

Modules:

- :mod:`canary.serving.app`: the FastAPI app (``create_app``), ``run_server`` and ``serving_in_thread``.
- :mod:`canary.serving.store`: the local metrics store (SQLite, WAL) every request is recorded in.
- :mod:`canary.serving.traffic`: a synthetic traffic generator (``run_traffic``).
- :mod:`canary.serving.cli`: the ``canary serve`` and ``canary traffic`` commands.

This package is deliberately empty so that the metrics backend can read the store without importing FastAPI.
"""
