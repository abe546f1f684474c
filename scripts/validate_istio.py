#!/usr/bin/env python3
"""Offline checks for the Istio manifests in istio/ (CRDs unknown to kubernetes-validate).

Checks: well-formed YAML; kinds/apiVersions; only known field names on the objects we
ship (allow-lists taken from istio.io/api v1.31 mesh/v1alpha1 and security/v1beta1);
required keys; the values sessiongate depends on (timeout > whoami timeout, failOpen
false, ports 9191/9192, CUSTOM action referencing a declared provider; RequestAuthentication
jwksUri on sessiongate's JWKS path; request principals naming a declared JWT issuer).

Usage: validate_istio.py MESH_CONFIG AUTHZ_POLICY|REQUEST_AUTHN [...]
Exit status 0 = all valid, 1 = problems found (printed).
"""
import re
import sys

import yaml  # PyYAML, installed with kubernetes-validate

WHOAMI_TIMEOUT_MS = 150

GRPC_PROVIDER_FIELDS = {
    "service", "port", "timeout", "failOpen", "clearRouteCache", "statusOnError",
    "includeRequestBodyInCheck",
}
HTTP_PROVIDER_FIELDS = {
    "service", "port", "timeout", "pathPrefix", "failOpen", "clearRouteCache",
    "statusOnError", "includeHeadersInCheck", "includeRequestHeadersInCheck",
    "includeAdditionalHeadersInCheck", "includeRequestBodyInCheck",
    "headersToUpstreamOnAllow", "headersToDownstreamOnDeny", "headersToDownstreamOnAllow",
}
AUTHZ_SPEC_FIELDS = {"selector", "targetRef", "targetRefs", "rules", "action", "provider"}
RULE_FIELDS = {"from", "to", "when"}
OPERATION_FIELDS = {"hosts", "notHosts", "ports", "notPorts", "methods", "notMethods",
                    "paths", "notPaths"}
REQUEST_AUTHN_SPEC_FIELDS = {"selector", "targetRef", "targetRefs", "jwtRules"}
JWT_RULE_FIELDS = {"issuer", "audiences", "jwksUri", "jwks", "fromHeaders", "fromParams",
                   "fromCookies", "outputPayloadToHeader", "forwardOriginalToken",
                   "outputClaimToHeaders", "timeout"}
SOURCE_FIELDS = {"principals", "notPrincipals", "requestPrincipals", "notRequestPrincipals",
                 "namespaces", "notNamespaces", "ipBlocks", "notIpBlocks", "remoteIpBlocks",
                 "notRemoteIpBlocks", "serviceAccounts", "notServiceAccounts"}


def duration_ms(v):
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m)", str(v))
    if not m:
        return None
    n, unit = float(m.group(1)), m.group(2)
    return n * {"ms": 1, "s": 1000, "m": 60000}[unit]


def unknown(obj, allowed, where, problems):
    if not isinstance(obj, dict):
        problems.append(f"{where}: expected a mapping, got {type(obj).__name__}")
        return
    for k in obj:
        if k not in allowed:
            problems.append(f"{where}: unknown field {k!r}")


def check_mesh(doc, where, problems, providers):
    if doc.get("apiVersion") != "install.istio.io/v1alpha1" or doc.get("kind") != "IstioOperator":
        problems.append(f"{where}: expected IstioOperator install.istio.io/v1alpha1")
    eps = (((doc.get("spec") or {}).get("meshConfig") or {}).get("extensionProviders"))
    if not isinstance(eps, list) or not eps:
        problems.append(f"{where}: spec.meshConfig.extensionProviders missing or empty")
        return
    for i, p in enumerate(eps):
        w = f"{where}: extensionProviders[{i}]"
        if not isinstance(p, dict) or not p.get("name"):
            problems.append(f"{w}: name is required")
            continue
        kinds = [k for k in p if k != "name"]
        if len(kinds) != 1:
            problems.append(f"{w}: exactly one provider type expected, got {kinds}")
            continue
        kind, cfg = kinds[0], p[kinds[0]]
        if kind == "envoyExtAuthzGrpc":
            unknown(cfg, GRPC_PROVIDER_FIELDS, f"{w}.{kind}", problems)
            want_port = 9191
        elif kind == "envoyExtAuthzHttp":
            unknown(cfg, HTTP_PROVIDER_FIELDS, f"{w}.{kind}", problems)
            want_port = 9192
            if cfg.get("pathPrefix") != "/check":
                problems.append(f"{w}.{kind}: pathPrefix must be /check")
        else:
            problems.append(f"{w}: unexpected provider type {kind!r}")
            continue
        if not isinstance(cfg, dict):
            continue
        providers.add(p["name"])
        svc = cfg.get("service", "")
        if not re.fullmatch(r"([a-z0-9-]+/)?[a-z0-9.-]+", str(svc)):
            problems.append(f"{w}.{kind}.service: required, got {svc!r}")
        if cfg.get("port") != want_port:
            problems.append(f"{w}.{kind}.port: must be {want_port}, got {cfg.get('port')!r}")
        t = duration_ms(cfg.get("timeout"))
        if t is None:
            problems.append(f"{w}.{kind}.timeout: required (Istio default is 600s), e.g. 0.5s")
        elif t <= WHOAMI_TIMEOUT_MS:
            problems.append(f"{w}.{kind}.timeout: {cfg['timeout']} must exceed whoami timeout {WHOAMI_TIMEOUT_MS}ms")
        if cfg.get("failOpen", False) is not False:
            problems.append(f"{w}.{kind}.failOpen: must be false (fail closed)")
        if "includeRequestBodyInCheck" in cfg:
            problems.append(f"{w}.{kind}.includeRequestBodyInCheck: sessiongate reads no body")
        if "statusOnError" in cfg and not isinstance(cfg["statusOnError"], str):
            problems.append(f"{w}.{kind}.statusOnError: must be a string such as \"503\"")


def security_spec(doc, where, problems, spec_fields):
    """Checks a security.istio.io object's apiVersion, metadata and spec field names; returns
    the spec, or None when it is not a mapping."""
    if doc.get("apiVersion") not in ("security.istio.io/v1", "security.istio.io/v1beta1"):
        problems.append(f"{where}: apiVersion must be security.istio.io/v1")
    md = doc.get("metadata") or {}
    if not md.get("name") or not md.get("namespace"):
        problems.append(f"{where}: metadata.name and metadata.namespace are required")
    spec = doc.get("spec")
    unknown(spec, spec_fields, f"{where}.spec", problems)
    return spec if isinstance(spec, dict) else None


def check_request_authn(doc, where, problems, issuers):
    spec = security_spec(doc, where, problems, REQUEST_AUTHN_SPEC_FIELDS)
    if spec is None:
        return
    rules = spec.get("jwtRules")
    if not isinstance(rules, list) or not rules:
        problems.append(f"{where}.spec.jwtRules: required")
        return
    for i, r in enumerate(rules):
        w = f"{where}.spec.jwtRules[{i}]"
        unknown(r, JWT_RULE_FIELDS, w, problems)
        if not isinstance(r, dict):
            continue
        if not r.get("issuer"):
            problems.append(f"{w}.issuer: required (sessiongate's jwt.issuer)")
        else:
            issuers.add(r["issuer"])
        uri = r.get("jwksUri")
        if uri is not None and not re.fullmatch(r"https?://[^/]+/\.well-known/jwks\.json", str(uri)):
            problems.append(f"{w}.jwksUri: {uri!r} is not sessiongate's <base>/.well-known/jwks.json")
        if uri and "svc.cluster.local" in str(uri) and ":9192/" not in str(uri):
            problems.append(f"{w}.jwksUri: the in-cluster sessiongate Service serves the JWKS on port 9192")
        for j, h in enumerate(r.get("fromHeaders") or []):
            unknown(h, {"name", "prefix"}, f"{w}.fromHeaders[{j}]", problems)
        for j, h in enumerate(r.get("outputClaimToHeaders") or []):
            unknown(h, {"header", "claim"}, f"{w}.outputClaimToHeaders[{j}]", problems)


def check_principals(doc, where, problems, issuers):
    """requestPrincipals are <iss>/<sub>: each must name an issuer some RequestAuthentication declares."""
    for i, rule in enumerate(((doc.get("spec") or {}).get("rules")) or []):
        for j, f in enumerate((rule or {}).get("from") or []):
            src = (f or {}).get("source") or {}
            for key in ("requestPrincipals", "notRequestPrincipals"):
                for p in src.get(key) or []:
                    if p == "*":
                        continue
                    iss = str(p).rsplit("/", 1)[0] if "/" in str(p) else p
                    if iss not in issuers:
                        problems.append(f"{where}.spec.rules[{i}].from[{j}].source.{key}: {p!r} names issuer "
                                        f"{iss!r}, not declared by a RequestAuthentication {sorted(issuers)}")


def check_policy(doc, where, problems, providers):
    spec = security_spec(doc, where, problems, AUTHZ_SPEC_FIELDS)
    if spec is None:
        return
    action = spec.get("action", "ALLOW")
    if action not in ("ALLOW", "DENY", "AUDIT", "CUSTOM"):
        problems.append(f"{where}.spec.action: invalid {action!r}")
    for i, rule in enumerate(spec.get("rules") or []):
        unknown(rule, RULE_FIELDS, f"{where}.spec.rules[{i}]", problems)
        for j, t in enumerate((rule or {}).get("to") or []):
            unknown(t, {"operation"}, f"{where}.spec.rules[{i}].to[{j}]", problems)
            unknown((t or {}).get("operation") or {}, OPERATION_FIELDS,
                    f"{where}.spec.rules[{i}].to[{j}].operation", problems)
        for j, f in enumerate((rule or {}).get("from") or []):
            unknown(f, {"source"}, f"{where}.spec.rules[{i}].from[{j}]", problems)
            unknown((f or {}).get("source") or {}, SOURCE_FIELDS,
                    f"{where}.spec.rules[{i}].from[{j}].source", problems)
    if action == "CUSTOM":
        name = (spec.get("provider") or {}).get("name")
        if name not in providers:
            problems.append(f"{where}.spec.provider.name: {name!r} is not a declared extensionProvider {sorted(providers)}")
        if not spec.get("rules"):
            problems.append(f"{where}.spec.rules: a CUSTOM policy without rules never calls the provider")
    elif "provider" in spec:
        problems.append(f"{where}.spec.provider: only valid with action CUSTOM")


def main(paths):
    problems, providers, issuers, docs = [], set(), set(), []
    for path in paths:
        try:
            with open(path) as fh:
                for i, doc in enumerate(yaml.safe_load_all(fh)):
                    if doc is not None:
                        docs.append((f"{path}[{i}]", doc))
        except (OSError, yaml.YAMLError) as e:
            problems.append(f"{path}: {e}")
    # Providers and issuers first, so policies in any file order can reference them.
    for where, doc in docs:
        if not isinstance(doc, dict):
            problems.append(f"{where}: not a mapping")
        elif doc.get("kind") == "IstioOperator":
            check_mesh(doc, where, problems, providers)
        elif doc.get("kind") == "RequestAuthentication":
            check_request_authn(doc, where, problems, issuers)
    for where, doc in docs:
        if isinstance(doc, dict) and doc.get("kind") == "AuthorizationPolicy":
            check_policy(doc, where, problems, providers)
            if issuers:
                check_principals(doc, where, problems, issuers)
        elif isinstance(doc, dict) and doc.get("kind") not in ("IstioOperator", "RequestAuthentication"):
            problems.append(f"{where}: unexpected kind {doc.get('kind')!r}")
    for p in problems:
        print(f"  {p}")
    return 1 if problems else 0


if __name__ == "__main__":
    if len(sys.argv) < 2:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    sys.exit(main(sys.argv[1:]))
