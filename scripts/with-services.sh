#!/usr/bin/env bash
# Runs a command with the test services up (RabbitMQ, SeaweedFS, moto on 127.0.0.1) and
# their variables exported, and stops the services afterwards, whatever the outcome.
#   scripts/with-services.sh cargo nextest run --workspace
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
trap '"$here/services.sh" stop >&2 || true' EXIT
# Captured first: a failed start must stop here (an `eval "$(...)"` would go on with an
# empty environment, and every integration test would fail for want of its services).
services_env=$("$here/services.sh" start)
eval "$services_env"
"$@"
