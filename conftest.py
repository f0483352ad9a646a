"""Repository-wide pytest options: ``--benchmark`` turns on the benchmark suite."""

import pytest


def pytest_addoption(parser):
    parser.addoption(
        "--benchmark",
        action="store_true",
        default=False,
        help="run the benchmarks in benchmarks/ (baseline beside contender, ratios printed)",
    )


def pytest_configure(config):
    config.addinivalue_line("markers", "benchmark: benchmark, runs only with --benchmark")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--benchmark"):
        return
    skip = pytest.mark.skip(reason="benchmark: run with `pytest benchmarks/ --benchmark`")
    for item in items:
        if "benchmark" in item.keywords:
            item.add_marker(skip)
