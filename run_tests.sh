#!/usr/bin/env bash
# Set up .venv if needed, then run the test suite on TEST_WORKERS processes (default 2; each
# takes up to ~4 GB; 0 runs in this process). Extra arguments go to pytest.
[ -n "${BASH_VERSION:-}" ] || exec bash "$0" "$@"     # `sh run_tests.sh` lacks `source`
if ! [[ ${TEST_WORKERS:-2} =~ ^([0-9]+|auto|logical)$ ]]; then   # pytest-xdist's -n values
    echo "error: TEST_WORKERS must be a number of test processes (0 runs in this one) or" \
         "auto; got '$TEST_WORKERS'" >&2
    exit 2
fi
caller="$PWD"
source "$(dirname "$0")/setup_env.sh"
# a test file or folder named from where the script was run, as pytest would take it there
args=()
for arg in "$@"; do
    if [[ $arg != -* && $arg != /* && -e "$caller/${arg%%::*}" ]]; then
        arg="$caller/$arg"
    fi
    args+=("$arg")
done
python -m pytest -q -n "${TEST_WORKERS:-2}" --dist loadfile ${args[@]+"${args[@]}"}
