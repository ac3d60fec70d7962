# Sourced by run_demo.sh and run_tests.sh: make .venv from requirements.txt if it is absent,
# older than requirements.txt or broken (an install cut short, an interpreter gone), then put
# it first on PATH.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
MIN_PYTHON="3.11"    # numpy>=2.4 and tensorflow>=2.21 have no wheels for older ones

venv_works() {
    # an install cut short leaves packages pip calls installed but that do not import
    .venv/bin/python -c 'import tensorflow, keras, cv2, numpy, sklearn, matplotlib, tqdm, h5py
import tifffile, imagecodecs, pytest, xdist' >/dev/null 2>&1
}

needs_setup() {
    [ ! -f .venv/.installed ] || [ requirements.txt -nt .venv/.installed ] || ! venv_works
}

if needs_setup; then
    # two scripts started together (README's two commands) must not install at once
    if command -v flock >/dev/null 2>&1; then
        exec 9>.venv.lock
        flock 9
    fi
    if needs_setup; then
        if ! python3 -c "import sys; sys.exit(sys.version_info < (${MIN_PYTHON/./, }))" 2>/dev/null; then
            # one line: no python3 at all, or a pyenv shim's screenful, would make it several
            found="$(command -v python3 >/dev/null && python3 -V 2>&1 || true)"
            found="${found%%$'\n'*}"
            echo "error: needs Python $MIN_PYTHON or newer; python3 here is ${found:-missing}:" \
                 "put a newer python3 first on PATH" >&2
            exit 1
        fi
        if [ -f .venv/.installed ] && [ -x .venv/bin/python ] && venv_works; then
            echo "requirements.txt changed: installing it into .venv..."
        else
            if [ -e .venv ]; then       # not "first run only": this one is not the first
                echo "Making .venv anew from requirements.txt (an install cut short, or the" \
                     "Python that made it gone; a few minutes)..."
            else
                echo "Setting up .venv from requirements.txt (first run only; a few minutes)..."
            fi
            rm -rf .venv        # half-made, or made by an interpreter that is gone
            python3 -m venv .venv
        fi
        rm -f .venv/.installed
        .venv/bin/python -m pip install --quiet --upgrade pip
        .venv/bin/python -m pip install --quiet -r requirements.txt
        if ! venv_works; then
            echo "error: .venv was installed but its packages do not import; see" \
                 "'.venv/bin/python -c \"import tensorflow\"'" >&2
            exit 1
        fi
        touch .venv/.installed
    fi
    if command -v flock >/dev/null 2>&1; then
        exec 9>&-
    fi
fi
export PATH="$PWD/.venv/bin:$PATH"
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-3}"
