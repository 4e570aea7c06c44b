"""Observability as code for the chart: dashboard generator, promtool install, metric-name checks.

Run from the repository root with the project's venv, e.g. ``.venv/bin/python -m observability.dashboards``.
"""
