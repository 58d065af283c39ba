"""tests/fault/: the shared test helpers of tests/ (data_fixtures, reference, ...) importable here.

pytest puts only this folder on sys.path for the files in it (no __init__.py anywhere in tests/),
so `python -m pytest tests/fault` alone would not find them.
"""

import os
import sys

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if TESTS not in sys.path:
  sys.path.insert(0, TESTS)
