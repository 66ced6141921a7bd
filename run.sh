#!/usr/bin/env bash
# One entry point for a fresh clone (see README.rst):
#   ./run.sh demo             set up if needed, then run the demo
#   ./run.sh test [ARGS...]   set up if needed, then run the whole test suite
#   ./run.sh bench [ARGS...]  set up if needed, then run the benchmarks
#   ./run.sh bench-transforms [ARGS...]  every derivative transform vs the reference
#   ./run.sh upstream [SRC OUT]  write the in-tree PyTensor patch (SRC: a PyTensor
#                             tree; default: the installed pytensor's sdist, cached)
# Set-up: a .venv with Python 3.12 (from .python-version, through pyenv when it
# is there) and this package installed editable with its test, pymc and jax
# extras (the suite covers PyMC models and the JAX backend).
set -euo pipefail
cd "$(dirname "$0")"

find_python() {
    local want
    want=$(tr -d '[:space:]' < .python-version)
    if command -v pyenv >/dev/null 2>&1 && pyenv prefix "$want" >/dev/null 2>&1; then
        echo "$(pyenv prefix "$want")/bin/python"
    elif command -v "python${want%.*}" >/dev/null 2>&1; then
        command -v "python${want%.*}"
    else
        echo "Python ${want%.*} is needed (PyTensor 3.3 requires Python >= 3.12)" >&2
        exit 1
    fi
}

if [ ! -x .venv/bin/python ]; then
    "$(find_python)" -m venv .venv
fi
if [ ! -f .venv/.installed ] || [ pyproject.toml -nt .venv/.installed ]; then
    .venv/bin/python -m pip install --quiet --upgrade pip
    .venv/bin/python -m pip install --quiet -e ".[test,pymc,jax]"
    touch .venv/.installed
fi

command=${1:-}
shift || true
case "$command" in
    demo) exec .venv/bin/python examples/demo.py "$@" ;;
    test) exec .venv/bin/python -m pytest "$@" ;;
    bench) exec .venv/bin/python benchmarks/bench_grad.py "$@" ;;
    bench-transforms) exec .venv/bin/python benchmarks/bench_transforms.py "$@" ;;
    upstream) exec .venv/bin/python scripts/upstream.py "$@" ;;
    *) echo "usage: ./run.sh demo | test [pytest args] | bench [args] | bench-transforms [args] | upstream [SRC OUT]" >&2; exit 2 ;;
esac
