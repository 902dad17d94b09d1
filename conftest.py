"""Project-wide pytest configuration.

The stage-acceptance plugin itself is registered through the ``pytest11`` entry point
when the package is installed; this file only turns a missing installation into a
clear one-line error instead of a screen of 'fixture not found'.
"""

import pytest


def pytest_configure(config):
    if not config.pluginmanager.has_plugin("stage_acceptance"):
        raise pytest.UsageError(
            "the stage_acceptance pytest plugin is not installed: run  pip install -e \".[test]\"  first"
        )
