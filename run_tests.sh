#!/usr/bin/env bash
# Set up .venv if needed, then run the test suite on TEST_WORKERS processes (default 2; each
# takes up to ~4 GB; 0 runs in this process). Extra arguments go to pytest.
source "$(dirname "$0")/setup_env.sh"
python -m pytest -q -n "${TEST_WORKERS:-2}" --dist loadfile "$@"
