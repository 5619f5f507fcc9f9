"""Shared pytest configuration: the fake Tart host fixtures, and the order of a parallel run."""

import os

import pytest

pytest_plugins = ["tests.faketart.fixtures"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Under pytest-xdist, the tests marked ``slow`` come first (in their usual order).

    Workers take tests from the front of the list a few at a time, so each slow test starts
    early on a worker of its own instead of several of them meeting on one worker at the end,
    where the whole run would wait for them. Every worker sorts alike, as xdist requires.
    """
    if os.environ.get("PYTEST_XDIST_WORKER"):
        items.sort(key=lambda item: item.get_closest_marker("slow") is None)
