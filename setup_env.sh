# Sourced by run_demo.sh and run_tests.sh: make .venv from requirements.txt if it is absent
# or older than requirements.txt, then put it first on PATH.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
if [ ! -f .venv/.installed ] || [ requirements.txt -nt .venv/.installed ]; then
    echo "Setting up .venv from requirements.txt (first run only; a few minutes)..."
    python3 -m venv .venv
    .venv/bin/python -m pip install --quiet --upgrade pip
    .venv/bin/python -m pip install --quiet -r requirements.txt
    touch .venv/.installed
fi
export PATH="$PWD/.venv/bin:$PATH"
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-3}"
