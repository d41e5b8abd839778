"""Benchmarks for the SLD loss: the naive reference formulation and pytest-benchmark suites.

Kept out of the default test run (``pyproject`` ``testpaths`` is ``tests``); run them with
``nox -s benchmarks`` or ``python -m pytest benchmarks --benchmark-only``.
"""
