"""Collection settings for the whole repository (tests/conftest.py holds the test fixtures)."""

import importlib.util

# the doctest collection imports every module; the Ray workers' module needs the optional Ray extra
collect_ignore = [] if importlib.util.find_spec("ray") else ["agents/alphazero/ray_selfplay.py"]
