"""Shared pytest configuration: the fake Tart host fixtures."""

pytest_plugins = ["tests.faketart.fixtures"]
