#!/usr/bin/env bash
# Sets up the checkout's virtualenv with the test extras, then runs the suite.
#
#   bash tests/run.sh [pytest args]
#
# Needs only Python >= 3.10 and pip; the first run installs everything into
# .venv (DD_VENV overrides), later runs reuse it.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${DD_VENV:-$REPO/.venv}"
if [[ ! -x "$VENV/bin/python" ]]; then
  echo "[tests] creating $VENV" >&2
  "${DD_PYTHON:-python3}" -m venv "$VENV"
fi
echo "[tests] installing $REPO[test]" >&2
export PYTHONWARNINGS=ignore  # setuptools' editable-install banner
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e "$REPO[test]"
unset PYTHONWARNINGS
cd "$REPO"
# Two workers (2 cores); a file stays on one worker so that its module and
# session fixtures (trained workdirs) are built once.
exec "$VENV/bin/python" -m pytest -n 2 --dist loadfile "$@"
