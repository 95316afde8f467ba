"""Kernel benchmarks: ``pytest bench/`` (pytest-benchmark) and their CSV / JSON / PNG / Markdown output.

A package so that its helper modules import as ``bench.*`` and never shadow the test
helpers of ``tests/opd_kernels/`` when both directories are collected in one run.
"""
