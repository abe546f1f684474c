#!/usr/bin/env python3
"""The Helm chart's default render must run sessiongate exactly like k8s/base does.

Compares, between k8s/base/*.yaml (plain manifests) and a `helm template` render with default
values: the container's ports, probes, lifecycle, resources and securityContext, the pod
securityContext, terminationGracePeriodSeconds, rollout strategy and volume mounts, the Service
ports, the PDB and HPA policy, the NetworkPolicy's ports, and the sessiongate config file
(k8s/base/config.yaml vs the rendered ConfigMap). Labels and names may differ.

Usage: chart_matches_base.py K8S_BASE_DIR RENDERED.yaml   (exit 1 on any difference)
"""
import glob
import os
import sys

import yaml


def by_kind(docs):
    out = {}
    for d in docs:
        if d and d.get("kind"):
            out.setdefault(d["kind"], d)
    return out


def load(paths):
    docs = []
    for p in paths:
        with open(p) as fh:
            docs += list(yaml.safe_load_all(fh))
    return by_kind(docs)


def facts(k):
    dep = k["Deployment"]["spec"]
    pod = dep["template"]["spec"]
    c = pod["containers"][0]
    np = k["NetworkPolicy"]["spec"]
    return {
        "container.ports": c["ports"],
        "container.args": c.get("args"),
        "container.probes": {p: c.get(p) for p in ("startupProbe", "livenessProbe", "readinessProbe")},
        "container.lifecycle": c.get("lifecycle"),
        "container.resources": c.get("resources"),
        "container.securityContext": c.get("securityContext"),
        "container.volumeMounts": [m["mountPath"] for m in c.get("volumeMounts", [])],
        "pod.securityContext": pod.get("securityContext"),
        "pod.terminationGracePeriodSeconds": pod.get("terminationGracePeriodSeconds"),
        "pod.automountServiceAccountToken": pod.get("automountServiceAccountToken"),
        "pod.topologySpread": [(t["topologyKey"], t["whenUnsatisfiable"]) for t in pod.get("topologySpreadConstraints", [])],
        "deployment.strategy": dep.get("strategy"),
        "service.ports": k["Service"]["spec"]["ports"],
        "pdb": {x: k["PodDisruptionBudget"]["spec"].get(x) for x in ("maxUnavailable", "unhealthyPodEvictionPolicy")},
        "hpa": {x: k["HorizontalPodAutoscaler"]["spec"].get(x) for x in ("minReplicas", "maxReplicas", "metrics", "behavior")},
        "networkpolicy.ingress.ports": [r.get("ports") for r in np.get("ingress", [])],
        "networkpolicy.egress.ports": [r.get("ports") for r in np.get("egress", [])],
        "networkpolicy.policyTypes": np.get("policyTypes"),
    }


def main(base_dir, rendered):
    base_k = load(sorted(glob.glob(os.path.join(base_dir, "*.yaml"))))
    chart_k = load([rendered])
    base, chart = facts(base_k), facts(chart_k)
    with open(os.path.join(base_dir, "config.yaml")) as fh:
        base["config"] = yaml.safe_load(fh)
    chart["config"] = yaml.safe_load(chart_k["ConfigMap"]["data"]["config.yaml"])
    diffs = [k for k in base if base[k] != chart[k]]
    for k in diffs:
        print(f"  {k}:\n    k8s/base: {base[k]}\n    chart:    {chart[k]}")
    if not diffs:
        print(f"ok: chart defaults match k8s/base ({len(base)} settings compared)")
    return 1 if diffs else 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    sys.exit(main(sys.argv[1], sys.argv[2]))
