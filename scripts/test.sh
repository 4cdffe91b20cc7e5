#!/usr/bin/env bash
# Install medprobe with its test extras into ./.venv, check style (ruff) and types (mypy), run the whole test suite.
# Needs only Python 3.11 (and, for the report's browser test, Debian's chromium: installed when root and missing).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/_venv.sh test
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) || echo "chromium not installed: browser test will skip"
fi
export PYTHONUTF8=1  # text I/O and subprocess output as UTF-8 whatever the machine's locale (CI may have none)
echo "ruff (style) on src/ and tests/, mypy (types) on src/"
python -m ruff check src tests bench
python -m mypy
# two test processes (pytest-xdist): the suite's end-to-end runs are single-threaded; MEDPROBE_TEST_WORKERS=0 runs
# everything in this process
exec python -m pytest -q -p no:cacheprovider -n "${MEDPROBE_TEST_WORKERS:-2}" "$@"
