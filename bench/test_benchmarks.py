"""Benchmarks as slow tests (`make bench`): each prints its figures and writes JSON under
bench/results/. They measure; the targets are read from the printed table."""

import pytest

from bench import import_csv

pytestmark = pytest.mark.slow


def test_import_csv_benchmark() -> None:
    figures = import_csv.run(100_000)
    assert figures["rows"] == 100_000
