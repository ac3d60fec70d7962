#!/usr/bin/env bash
# Set up .venv if needed, then run the test suite. Extra arguments go to pytest.
source "$(dirname "$0")/setup_env.sh"
python -m pytest -q "$@"
