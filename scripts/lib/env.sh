# shellcheck shell=bash
# Sourced by the scripts in scripts/: makes sure the project's virtualenv `.venv` exists with
# the project installed (editable, with dev extras), and reinstalls it when pyproject.toml is
# newer than the last install. Expects the current directory to be the repository root.

_pipeline_python() {
    # The first Python 3.11+ on PATH (PYTHON overrides).
    local candidate
    for candidate in ${PYTHON:-} python3.13 python3.12 python3.11 python3; do
        if command -v "$candidate" >/dev/null 2>&1 &&
            "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            command -v "$candidate"
            return 0
        fi
    done
    return 1
}

_pipeline_ensure_venv() {
    local python
    if [[ ! -x .venv/bin/python ]]; then
        if ! python=$(_pipeline_python); then
            echo "error: Python 3.11 or newer is needed (set PYTHON=/path/to/python3.11)" >&2
            return 1
        fi
        echo "creating .venv with $python ($("$python" --version 2>&1))" >&2
        "$python" -m venv .venv
        rm -f .venv/.installed
    fi
    if [[ ! -f .venv/.installed || pyproject.toml -nt .venv/.installed ]]; then
        echo "installing the project into .venv (pip install -e '.[dev]')..." >&2
        .venv/bin/python -m pip install --quiet --upgrade pip
        .venv/bin/python -m pip install --quiet -e '.[dev]'
        touch .venv/.installed
        echo "installed: $(.venv/bin/python --version 2>&1), project from pyproject.toml" >&2
    fi
}

_pipeline_ensure_venv
