#!/usr/bin/env bash
# Runs the whole system on this machine, against its own RabbitMQ, Redis and PostgreSQL
# (the database is created if missing). Ctrl-C or SIGTERM stops both services cleanly.
#
#   deploy/run-local.sh            # release build
#   PROFILE=dev deploy/run-local.sh  # faster to build
set -euo pipefail
cd "$(dirname "$0")/.."

profile=${PROFILE:-release}
# The simulator too, so that "Try it in one minute" (README) runs without another build.
cargo build --profile "$profile" -p ingress -p processor -p simulator
dir=target/$([ "$profile" = dev ] && echo debug || echo "$profile")

# Local defaults; anything already in the environment wins.
export DOJO_WEBHOOK_SECRETS=${DOJO_WEBHOOK_SECRETS:-ws_OYsyzcrH70GpJfs8MMkKpg}
export DOJO_REST_USERNAME=${DOJO_REST_USERNAME:-dojo}
export DOJO_REST_PASSWORD=${DOJO_REST_PASSWORD:-change-me}
export PROCESSOR_API_TOKEN=${PROCESSOR_API_TOKEN:-change-me}

"$dir/processor" & processor=$!
"$dir/ingress" & ingress=$!
stop() {
  kill -TERM "$ingress" "$processor" 2>/dev/null || true
  wait "$ingress" "$processor" 2>/dev/null || true
}
stopping=
trap 'stopping=1; stop' INT TERM
# If either exits on its own, stop the other too, and exit non-zero: a service that
# could not start (bad configuration, port taken) is a failed run.
rc=0
wait -n "$ingress" "$processor" || rc=$?
if [ -z "$stopping" ] && [ "$rc" -eq 0 ]; then
  # A service exits 0 only when told to stop (SIGINT or SIGTERM): Ctrl-C or `kill -INT`
  # sent to the whole process group reaches the services too, and may end one before
  # this script's trap runs. A stop, not a failure.
  stopping=1
fi
if [ -z "$stopping" ]; then
  echo "run-local: a service exited on its own (status $rc); stopping the other" >&2
  stop
  exit "$rc"
fi
stop
