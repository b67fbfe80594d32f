#!/bin/bash
# The whole suite: static checks, generated-code check, then every pytest tier (unit, kernel, vm, e2e).
# Ends with pytest's summary line; the session fails when it leaves anything on the machine (tests/support/leaks.py).
set -uo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
fail=0
echo "== clean-host"; /usr/bin/python3 scripts/clean-host.py   # what earlier killed runs left
echo "== ruff";  ruff check . || fail=1
echo "== mypy";  python scripts/typecheck.py || fail=1
echo "== generated protobuf code"; bash scripts/gen-proto.sh --check || fail=1
echo "== pytest (all tiers)"
python -m pytest "$@"
rc=$?
[ $rc -eq 5 ] && rc=1   # "no tests collected" is a failure here
[ $fail -ne 0 ] && [ $rc -eq 0 ] && { echo "static checks failed (see above)"; rc=1; }
exit $rc
