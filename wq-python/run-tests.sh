#!/usr/bin/env bash
# Builds and installs cmwq into a fresh virtualenv (pip + maturin, as a user would), then runs
# its pytest suite. Extra arguments go to pytest. Exit status: pytest's, except that "no tests
# collected" (pytest's 5) counts as a failure.
#
#   wq-python/run-tests.sh            # whole suite
#   wq-python/run-tests.sh -k asyncio # a subset
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
python="${PYTHON:-python3}"
venv="$(mktemp -d "${TMPDIR:-/tmp}/cmwq-venv.XXXXXX")"
trap 'rm -rf "$venv"' EXIT

echo "run-tests.sh: creating $venv with $("$python" --version 2>&1)"
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "$here" pytest

cd "$here"
set +e
"$venv/bin/python" -m pytest -p no:cacheprovider "$here/tests" "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
    echo "run-tests.sh: pytest collected no tests; failing" >&2
    exit 1
fi
exit "$status"
