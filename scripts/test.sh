#!/usr/bin/env bash
# The project's test command (README "Run the tests"; .ci/run calls exactly this).
# Installs what the tests need: the package with its test extras, and — as root — the Debian
# packages the lab tests use (openssh-server, etcd-server, etcd-client). Then lint + pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -m pip install --quiet --disable-pip-version-check -e '.[test]'
if [ "$(id -u)" = "0" ] && [ -x scripts/install-test-deps.sh ]; then
    bash scripts/install-test-deps.sh
fi

python3 -m ruff check .

set +e
python3 -m pytest "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
    echo "scripts/test.sh: pytest collected no tests — that is a failure, not a pass" >&2
    exit 1
fi
exit "$status"
