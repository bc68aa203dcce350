#!/usr/bin/env bash
# The local run, checked end to end: start both services with deploy/run-local.sh
# against this machine's RabbitMQ (a vhost of its own), Redis and PostgreSQL (a fresh
# database, created by the processor), send one signed webhook with curl, see it in the
# database, stop.
set -euo pipefail
cd "$(dirname "$0")/.."

db=dojo_events_smoke
vhost=dojo-events-smoke-$$
psql -h 127.0.0.1 -U postgres -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null
# A vhost of its own: the run starts from an empty broker, whatever else this machine ran.
rabbitmqctl -q add_vhost "$vhost" >/dev/null
rabbitmqctl -q set_permissions -p "$vhost" guest '.*' '.*' '.*' >/dev/null
export AMQP_URL="amqp://guest:guest@127.0.0.1:5672/$vhost"
export DATABASE_URL=postgres://postgres@127.0.0.1:5432/$db
export INGRESS_ADDR=127.0.0.1:18180 PROCESSOR_ADDR=127.0.0.1:18181
export DOJO_WEBHOOK_SECRETS=ws_OYsyzcrH70GpJfs8MMkKpg RUST_LOG=warn
profile=${PROFILE:-dev}
# Build first, in the foreground: on a fresh checkout the build takes minutes, and the
# readiness wait below is for the services, not for the compiler.
cargo build -q --profile "$profile" -p ingress -p processor -p simulator
PROFILE=$profile deploy/run-local.sh > /tmp/dojo-events-smoke.log 2>&1 &
runner=$!
trap 'kill -TERM $runner 2>/dev/null || true; rabbitmqctl -q delete_vhost "$vhost" >/dev/null 2>&1 || true' EXIT

ready=
for _ in $(seq 1 120); do
  curl -sf http://127.0.0.1:18180/readyz >/dev/null && curl -sf http://127.0.0.1:18181/readyz >/dev/null && { ready=1; break; }
  kill -0 $runner 2>/dev/null || break
  sleep 1
done
[ -n "$ready" ] || { echo "smoke: the services did not become ready"; cat /tmp/dojo-events-smoke.log; exit 1; }

BODY='{"id":"evt_hnnHxIKR_Uy6bhZCusCltw","event":"payment_intent.created","accountId":"acc_test","createdAt":"2022-02-01T13:07:41.8667859Z","data":{"paymentIntentId":"pi_vpwd4ooAPEqyNAQe4z89WQ","paymentStatus":"Created","captureMode":"Auto"}}'
SIG=$(printf '%s' "$BODY" | openssl dgst -sha256 -hmac "$DOJO_WEBHOOK_SECRETS" -binary | od -An -tx1 | tr -d ' \n' | tr a-f A-F | sed 's/../&-/g; s/-$//')
answer=$(curl -s -w '%{http_code}' http://127.0.0.1:18180/v1/webhooks/dojo \
  -H 'content-type: application/json' -H "dojo-signature: sha256=$SIG" --data-binary "$BODY")
[ "$answer" = "{}
200" ] || { echo "smoke: webhook answered: $answer"; cat /tmp/dojo-events-smoke.log; exit 1; }

status=
for _ in $(seq 1 100); do
  status=$(psql -h 127.0.0.1 -U postgres -d $db -tAc \
    "SELECT status || '/' || capture_mode FROM payment_intents WHERE payment_intent_id = 'pi_vpwd4ooAPEqyNAQe4z89WQ'" 2>/dev/null || true)
  [ -n "$status" ] && break
  sleep 0.1
done
[ "$status" = "Created/Auto" ] || { echo "smoke: payment intent not recorded ($status)"; cat /tmp/dojo-events-smoke.log; exit 1; }

kill -TERM $runner
wait $runner
trap - EXIT
rabbitmqctl -q delete_vhost "$vhost" >/dev/null
if pgrep -f "target/.*/(ingress|processor)$" >/dev/null; then echo "smoke: services still running"; exit 1; fi

# A service that cannot start (its port taken) fails the whole run, with a non-zero exit.
holder=$(mktemp); python3 -c 'import socket,sys,time; s=socket.socket(); s.bind(("127.0.0.1",18182)); s.listen(); open(sys.argv[1],"w").write("up"); time.sleep(600)' "$holder" & blocker=$!
for _ in $(seq 1 50); do [ -s "$holder" ] && break; sleep 0.1; done
rc=0
INGRESS_ADDR=127.0.0.1:18182 PROFILE=$profile timeout 120 deploy/run-local.sh >> /tmp/dojo-events-smoke.log 2>&1 || rc=$?
kill "$blocker" 2>/dev/null || true; rm -f "$holder"
[ "$rc" -ne 0 ] && [ "$rc" -ne 124 ] || { echo "smoke: run-local.sh exited $rc with ingress unable to start"; exit 1; }
psql -h 127.0.0.1 -U postgres -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null
echo "smoke: local run started, accepted a signed webhook, recorded it (Created/Auto), stopped cleanly; with ingress unable to start it exited $rc"
