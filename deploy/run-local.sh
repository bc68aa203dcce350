#!/usr/bin/env bash
# Runs the whole system on this machine, against its own RabbitMQ, Redis and PostgreSQL
# (the database is created if missing). Ctrl-C or SIGTERM stops both services cleanly.
#
#   deploy/run-local.sh            # release build
#   PROFILE=dev deploy/run-local.sh  # faster to build
set -euo pipefail
cd "$(dirname "$0")/.."

profile=${PROFILE:-release}
cargo build --profile "$profile" -p ingress -p processor
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
trap stop INT TERM
# If either exits on its own, stop the other too.
wait -n "$ingress" "$processor" || true
stop
