#!/usr/bin/env bash
# Property-based API fuzzing of both services with Schemathesis, from their own OpenAPI
# descriptions (served at /openapi.json): every response must match the description, no
# input may cause a 5xx, and what the description says is invalid must be refused.
# Bounded: API_FUZZ_SECONDS (default 90) per service. Runs against this machine's
# RabbitMQ, Redis and PostgreSQL, on a vhost and a database of its own.
#   deploy/api-fuzz.sh            # needs python3 (Schemathesis goes into a virtualenv)
set -euo pipefail
cd "$(dirname "$0")/.."

budget=${API_FUZZ_SECONDS:-90}
tools=${API_FUZZ_VENV:-/tmp/dojo-events-api-fuzz}
if [ ! -x "$tools/bin/schemathesis" ] || [ ! -x "$tools/bin/openapi-spec-validator" ]; then
  python3 -m venv "$tools"
  "$tools/bin/pip" install -q schemathesis openapi-spec-validator
fi

cargo build -q -p ingress -p processor
db=dojo_events_fuzz
vhost=dojo-events-fuzz-$$
psql -h 127.0.0.1 -U postgres -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1
rabbitmqctl -q add_vhost "$vhost" >/dev/null
rabbitmqctl -q set_permissions -p "$vhost" guest '.*' '.*' '.*' >/dev/null
export AMQP_URL="amqp://guest:guest@127.0.0.1:5672/$vhost"
export DATABASE_URL=postgres://postgres@127.0.0.1:5432/$db
export REDIS_KEY_PREFIX="fuzz-$$:" RUST_LOG=error ENRICH_ENABLED=false
export INGRESS_ADDR=127.0.0.1:18280 PROCESSOR_ADDR=127.0.0.1:18281
# One location, "fuzz", with REST credentials and a webhook secret (deploy/api-fuzz.toml
# names it for the /locations/{location}/... routes).
locations=/tmp/dojo-events-fuzz-locations-$$.toml
cat > "$locations" <<TOML
[[location]]
id = "fuzz"
account_id = "acc_fuzz"
webhook_secrets = ["fuzz-secret"]
rest_username = "dojo"
rest_password = "fuzz-pass"
TOML
export DOJO_LOCATIONS_FILE=$locations PROCESSOR_API_TOKEN=fuzz-token
target/debug/processor > /tmp/dojo-events-fuzz-processor.log 2>&1 & processor=$!
target/debug/ingress > /tmp/dojo-events-fuzz-ingress.log 2>&1 & ingress=$!
cleanup() {
  kill -TERM "$ingress" "$processor" 2>/dev/null || true
  wait "$ingress" "$processor" 2>/dev/null || true
  rabbitmqctl -q delete_vhost "$vhost" >/dev/null 2>&1 || true
  rm -f "$locations"
}
trap cleanup EXIT
ready=
for _ in $(seq 1 120); do
  curl -sf http://127.0.0.1:18280/readyz >/dev/null && curl -sf http://127.0.0.1:18281/readyz >/dev/null && { ready=1; break; }
  sleep 1
done
[ -n "$ready" ] || { echo "api-fuzz: the services did not become ready"; tail -20 /tmp/dojo-events-fuzz-*.log; exit 1; }

status=0
for service in ingress:18280 processor:18281; do
  name=${service%%:*}; port=${service##*:}
  spec=/tmp/dojo-events-fuzz-$name.json
  curl -sf "http://127.0.0.1:$port/openapi.json" -o "$spec"
  # An invalid description fails the run (the validator's verdict is printed either way).
  if verdict=$("$tools/bin/openapi-spec-validator" "$spec" 2>&1); then
    echo "api-fuzz: $name: $(echo "$verdict" | tail -1)"
  else
    echo "api-fuzz: $name: /openapi.json is not valid OpenAPI:"; echo "$verdict" | tail -20
    status=1
  fi
  auth=()
  case $name in
    ingress) auth=(--auth dojo:fuzz-pass) ;;
    processor) auth=(-H "Authorization: Bearer fuzz-token") ;;
  esac
  "$tools/bin/schemathesis" --config-file deploy/api-fuzz.toml run "$spec" --url "http://127.0.0.1:$port" "${auth[@]}" \
    --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,response_headers_conformance,negative_data_rejection \
    --max-time "$budget" --request-timeout 10 --no-color || status=1
done
exit $status
