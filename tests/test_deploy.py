"""The container and deploy files, checked without a container engine: Dockerfile structure, Kubernetes manifests,
and a Grafana dashboard that names only metrics the server exports."""
import json
import os
import re

import yaml
from prometheus_client import generate_latest

from engine.metrics import EngineMetrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read(path: str) -> str:
    with open(os.path.join(ROOT, path)) as f:
        return f.read()


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", read("Dockerfile"))
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_structure():
    ins = dockerfile_instructions()
    stages = [rest for word, rest in ins if word == "FROM"]
    assert len(stages) >= 2 and any(" AS build" in s for s in stages)
    assert any(w == "ARG" and r.startswith("BASE_IMAGE=") for w, r in ins) and stages[0].startswith("${BASE_IMAGE}")
    assert any(w == "ARG" and r.startswith("DEVICE=cpu") for w, r in ins)
    assert any(w == "COPY" and "--from=build" in r for w, r in ins)
    users = [r for w, r in ins if w == "USER"]
    assert users and users[-1] not in ("root", "0")
    assert ("EXPOSE", "8000") in ins
    assert ("VOLUME", "/models") in ins
    health = next(r for w, r in ins if w == "HEALTHCHECK")
    assert "--start-period=" in health and "/health" in health
    runs = " ".join(r for w, r in ins if w == "RUN")
    assert "-r requirements.txt" in runs and "[gpu]" in runs
    assert any(w == "COPY" and r.split()[0] == "requirements.txt" for w, r in ins)
    entry = json.loads(next(r for w, r in ins if w == "ENTRYPOINT"))
    assert entry == ["actserve", "serve"]


def test_dockerfile_installs_what_make_installs():
    makefile = read("Makefile")
    assert "-r requirements.txt" in makefile
    pins = [line for line in read("requirements.txt").splitlines() if line and not line.startswith("#")]
    assert "torch==2.13.0" in pins and all("==" in p for p in pins)
    ignored = read(".dockerignore").split()
    assert ".venv" in ignored and ".git" in ignored and "requirements.txt" not in ignored


def test_kubernetes_manifests():
    docs = [d for d in yaml.safe_load_all(read("deploy/kubernetes.yaml")) if d]
    kinds = {d["kind"]: d for d in docs}
    assert set(kinds) >= {"Deployment", "Service"}
    pod = kinds["Deployment"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["path"] == "/health"
    assert container["ports"][0]["containerPort"] == 8000
    assert pod["securityContext"]["runAsNonRoot"] is True
    selector = kinds["Service"]["spec"]["selector"]
    assert selector.items() <= kinds["Deployment"]["spec"]["template"]["metadata"]["labels"].items()


def exported_metric_names() -> set[str]:
    metrics = EngineMetrics("m")
    text = generate_latest(metrics.registry).decode()
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}


def test_dashboard_names_only_exported_metrics():
    dashboard = json.loads(read("deploy/grafana-dashboard.json"))
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    exprs += [v["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    used = {name for e in exprs for name in re.findall(r"actserve:[a-zA-Z0-9_:]+", e)}
    exported = exported_metric_names()
    assert used and used <= exported, used - exported
    for name in ("running", "waiting", "kv_cache", "time_to_first_token", "inter_token", "e2e", "success"):
        assert any(name in u for u in used)
