#!/usr/bin/env bash
# End-to-end check of docker-compose.yml on a real Docker engine, then everything torn down.
#
#   bash scripts/compose_e2e.sh                       # compose v2 if installed, else v1 (docker-compose)
#   COMPOSE=docker-compose bash scripts/compose_e2e.sh   # pick one
#
# Steps (each bounded by `timeout`; the first failure stops the run and tears down):
#   1. build the images (export with CPU torch, api); the registry images must exist locally or be
#      pullable (without a registry: ../shared/tools/docker-standins.sh builds stand-ins, and this
#      script runs it when they are missing)
#   2. bring the stack up without Grafana (lb, api, redis, prometheus; the export one-shot first)
#   3. through the load balancer: /readyz answers with the ONNX bundle backend
#   4. the README's service examples (rank, classify, compare, explain) give the README's answers
#      (tests/readme_examples.py)
#   5. a class store survives a restart of the api, and a restart of Redis (then of the api again,
#      so the answer comes from Redis's append-only file, not from a replica's cache)
#   6. `--scale api=3`: Prometheus sees three healthy api targets
#   7. every api container's HEALTHCHECK turns healthy
#   8. `down -v`: containers, network and volumes removed (images kept as build cache)
#
# Settings: PCCLIP_E2E_PORT (lb on the host, default 18000), PCCLIP_E2E_PROMETHEUS_PORT (19090),
# PCCLIP_E2E_PROJECT (compose project, pcclip-e2e), PCCLIP_E2E_STEP_TIMEOUT (s per step, 600),
# PCCLIP_E2E_BUILD_TIMEOUT (s, 3600), PCCLIP_DATA_DIR (data root, ../shared/data), PYTHON (the
# interpreter that runs tests/readme_examples.py, .venv/bin/python), PCCLIP_EXPORT_TORCH_INDEX_URL
# (passed through to the export build; see README "Deployment").
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD

PORT=${PCCLIP_E2E_PORT:-18000}
PROM_PORT=${PCCLIP_E2E_PROMETHEUS_PORT:-19090}
PROJECT=${PCCLIP_E2E_PROJECT:-pcclip-e2e}
STEP_TIMEOUT=${PCCLIP_E2E_STEP_TIMEOUT:-600}
BUILD_TIMEOUT=${PCCLIP_E2E_BUILD_TIMEOUT:-3600}
PYTHON=${PYTHON:-$REPO/.venv/bin/python}
STANDINS=${PCCLIP_E2E_STANDINS:-$REPO/../shared/tools/docker-standins.sh}
LB=http://127.0.0.1:$PORT
STARTED=$(date +%s)

log() { printf '[e2e %4ds] %s\n' "$(( $(date +%s) - STARTED ))" "$*"; }
die() { log "FAIL: $*"; exit 1; }

# --- compose v1 or v2 --------------------------------------------------------------------------
if [ -n "${COMPOSE:-}" ]; then
  read -ra COMPOSE_CMD <<< "$COMPOSE"
elif docker compose version >/dev/null 2>&1; then
  COMPOSE_CMD=(docker compose)
elif command -v docker-compose >/dev/null 2>&1; then
  COMPOSE_CMD=(docker-compose)
else
  die "neither 'docker compose' (v2) nor 'docker-compose' (v1) is installed"
fi
COMPOSE_VERSION=$("${COMPOSE_CMD[@]}" version 2>/dev/null | head -1)
C=("${COMPOSE_CMD[@]}" -p "$PROJECT" -f "$REPO/docker-compose.yml")
export PCCLIP_HTTP_PORT=$PORT PROMETHEUS_PORT=$PROM_PORT
export PCCLIP_DATA_DIR=${PCCLIP_DATA_DIR:-$REPO/../shared/data}

# The Dockerfiles need BuildKit (RUN --mount). Compose v2 has it; v1 builds through the docker CLI
# (COMPOSE_DOCKER_CLI_BUILD=1), which needs the buildx plugin from engine 23 on, or an older CLI
# whose built-in BuildKit client runs with DOCKER_BUILDKIT=1: take the first docker on PATH that can.
export DOCKER_BUILDKIT=1 COMPOSE_DOCKER_CLI_BUILD=1
can_buildkit() {
  "$1" buildx version >/dev/null 2>&1 && return 0
  local version major
  version=$("$1" version --format '{{.Client.Version}}' 2>/dev/null) || return 1
  major=${version%%.*}
  [[ $major =~ ^[0-9]+$ ]] && [ "$major" -lt 23 ]
}
if [ "${COMPOSE_CMD[0]}" = "docker-compose" ]; then
  BUILD_DOCKER=""
  while read -r candidate; do
    if can_buildkit "$candidate"; then BUILD_DOCKER=$candidate; break; fi
  done < <(which -a docker | awk '!seen[$0]++')
  [ -n "$BUILD_DOCKER" ] || die "no docker CLI on PATH can build with BuildKit (install the buildx plugin)"
  BUILD_PATH="$(dirname "$BUILD_DOCKER"):$PATH"
else
  BUILD_DOCKER=$(command -v docker)
  BUILD_PATH=$PATH
fi

step() {  # step NAME SECONDS COMMAND...: run with a time bound, log how long it took
  local name=$1 limit=$2 t0
  shift 2
  t0=$(date +%s)
  log "$name ..."
  if ! timeout "$limit" "$@"; then
    die "$name (exit or timeout after ${limit}s)"
  fi
  log "$name: ok ($(( $(date +%s) - t0 ))s)"
}

wait_for() {  # wait_for WHAT SECONDS COMMAND...: poll every 2 s until the command succeeds
  local what=$1 limit=$2 deadline
  shift 2
  deadline=$(( $(date +%s) + limit ))
  until "$@" >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$deadline" ] || die "timed out after ${limit}s waiting for $what"
    sleep 2
  done
  log "$what: ok"
}

teardown() {
  local status=$?
  log "teardown: ${C[*]} down -v"
  if [ "$status" -ne 0 ]; then
    timeout 60 "${C[@]}" ps || true
    timeout 60 "${C[@]}" logs --tail 40 export api lb 2>&1 | tail -120 || true
  fi
  timeout 300 "${C[@]}" down -v --remove-orphans >/dev/null 2>&1 || log "teardown: down failed"
  [ "$status" -eq 0 ] && log "PASS (${COMPOSE_VERSION}; $(( $(date +%s) - STARTED ))s)"
  exit "$status"
}

json_field() {  # json_field URL PYTHON-EXPRESSION-OF-d: print the expression over the URL's JSON
  curl -sf --max-time 10 "$1" | "$PYTHON" -c "import json, sys; d = json.load(sys.stdin); print($2)"
}

log "compose: ${COMPOSE_CMD[*]} ($COMPOSE_VERSION); build CLI: $BUILD_DOCKER; lb $LB; prometheus :$PROM_PORT"
docker info >/dev/null 2>&1 || die "no Docker engine answers (start it: dockerd >/tmp/dockerd.log 2>&1 &)"
trap teardown EXIT
timeout 300 "${C[@]}" down -v --remove-orphans >/dev/null 2>&1 || true  # leftovers of an earlier run

# --- 1. images -------------------------------------------------------------------------------
missing=$(for image in python:3.11-slim-bookworm redis:7.4-alpine nginx:1.27-alpine prom/prometheus:v2.55.1; do
  docker image inspect "$image" >/dev/null 2>&1 || echo "$image"; done)
if [ -n "$missing" ]; then
  if [ -f "$STANDINS" ]; then
    step "base images (stand-ins: $STANDINS)" "$BUILD_TIMEOUT" bash "$STANDINS"
  else
    step "pull base images" "$STEP_TIMEOUT" "${C[@]}" pull --ignore-pull-failures lb redis prometheus
  fi
fi
step "build export and api images" "$BUILD_TIMEOUT" env PATH="$BUILD_PATH" "${C[@]}" build export api

# --- 2. up without Grafana ---------------------------------------------------------------------
step "up: lb, prometheus (+ api, redis, export one-shot)" "$STEP_TIMEOUT" "${C[@]}" up -d lb prometheus
log "export one-shot: $("${C[@]}" logs --no-color export 2>/dev/null | grep -v '^Attaching' | tail -n 2 | tr '\n' ' ')"

# --- 3. /readyz through the lb, bundle backend -------------------------------------------------
ready() { [ "$(json_field "$LB/readyz" 'd["backend"] == "onnxruntime" and d["redis"]["up"]')" = "True" ]; }
wait_for "/readyz through the lb with the ONNX bundle backend and Redis up" "$STEP_TIMEOUT" ready
log "readyz: $(curl -s --max-time 10 "$LB/readyz")"

# --- 4. the README's answers -------------------------------------------------------------------
step "README examples (rank, classify, compare, explain) give the README's answers" "$STEP_TIMEOUT" \
  "$PYTHON" -m tests.readme_examples "$LB"

# --- 5. a store survives api and Redis restarts -------------------------------------------------
P=$PCCLIP_DATA_DIR/cub100/images/Brown_Pelican/0000.jpg
classify_store() { curl -sf --max-time 60 "$LB/v1/classify" -F images=@"$P" -F store=e2e-birds; }
put=$(curl -s --max-time 60 -X PUT "$LB/v1/stores/e2e-birds" -H 'content-type: application/json' \
  -d '{"classes": ["Brown Pelican", "Anna Hummingbird", "Ivory Gull"]}')
case $put in *'"name":"e2e-birds"'*) ;; *) die "PUT /v1/stores/e2e-birds: $put" ;; esac
before=$(classify_store) || die "classify against the store"
log "store e2e-birds: $before"
same_answer() { [ "$(classify_store)" = "$before" ]; }
step "restart api" "$STEP_TIMEOUT" "${C[@]}" restart api
wait_for "/readyz after the api restart" "$STEP_TIMEOUT" ready
wait_for "the store's answer after the api restart" 60 same_answer
step "restart redis" "$STEP_TIMEOUT" "${C[@]}" restart redis
wait_for "/readyz with Redis up again" "$STEP_TIMEOUT" ready
listed() { [ "$(json_field "$LB/v1/stores" '"e2e-birds" in d["stores"]')" = "True" ]; }
wait_for "GET /v1/stores to list e2e-birds from the restarted Redis" 60 listed
step "restart api (empty caches: the store must come from Redis)" "$STEP_TIMEOUT" "${C[@]}" restart api
wait_for "/readyz after the second api restart" "$STEP_TIMEOUT" ready
wait_for "the store's answer from Redis" 60 same_answer
log "store survived: $(classify_store)"

# --- 6. three replicas, all scraped ------------------------------------------------------------
step "scale api to 3" "$STEP_TIMEOUT" "${C[@]}" up -d --scale api=3 lb prometheus
up_targets() {
  json_field "http://127.0.0.1:$PROM_PORT/api/v1/targets?state=active" \
    'sum(1 for t in d["data"]["activeTargets"] if t["labels"]["job"] == "pcclip-api" and t["health"] == "up")'
}
three_up() { [ "$(up_targets)" = "3" ]; }
wait_for "Prometheus to see 3 healthy api targets" "$STEP_TIMEOUT" three_up
log "prometheus targets up: $(up_targets); $(json_field "http://127.0.0.1:$PROM_PORT/api/v1/targets?state=active" \
  '", ".join(sorted(t["labels"]["instance"] for t in d["data"]["activeTargets"] if t["labels"]["job"] == "pcclip-api"))')"

# --- 7. HEALTHCHECK --------------------------------------------------------------------------
api_health() { docker inspect --format '{{.State.Health.Status}}' $("${C[@]}" ps -q api) | sort | uniq -c | tr '\n' ' '; }
all_healthy() { [ "$(docker inspect --format '{{.State.Health.Status}}' $("${C[@]}" ps -q api) | sort -u)" = "healthy" ]; }
wait_for "every api container's HEALTHCHECK to turn healthy" "$STEP_TIMEOUT" all_healthy
log "api health: $(api_health)"
# teardown (trap) prints PASS
