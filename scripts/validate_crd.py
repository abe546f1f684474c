#!/usr/bin/env python3
"""Validate custom resources against their CustomResourceDefinition's OpenAPI v3 schema, offline.

kubernetes-validate only knows built-in kinds (it merely warns about CRDs). This checks the
objects of the CRD's group/kind/version(s) found in MANIFEST files against the CRD's
openAPIV3Schema, made strict like `kubectl apply --validate=strict`: an object that lists
`properties` rejects other fields unless it says x-kubernetes-preserve-unknown-fields.
Other kinds in the manifests are ignored; a CRD kind found nowhere is an error (so a renamed
template cannot silently skip the check).

Usage: validate_crd.py CRD.yaml MANIFEST.yaml [...]
Exit status 0 = all valid, 1 = problems found (printed), 2 = usage.
"""
import sys

import jsonschema  # installed with kubernetes-validate
import yaml


def strict(schema):
    """Copy of an OpenAPI v3 schema with additionalProperties: false where fields are listed."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict(v) for k, v in schema.items()}
    if ("properties" in out and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    # x-kubernetes-int-or-string: the schema has no `type`; anyOf/pattern already say it.
    return out


def main(crd_path, paths):
    with open(crd_path) as fh:
        crd = yaml.safe_load(fh)
    group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
    schemas = {f"{group}/{v['name']}": strict(v["schema"]["openAPIV3Schema"])
               for v in crd["spec"]["versions"] if v.get("served", True)}
    problems, seen = [], 0
    for path in paths:
        with open(path) as fh:
            docs = [d for d in yaml.safe_load_all(fh) if d]
        for i, doc in enumerate(docs):
            if doc.get("kind") != kind or not str(doc.get("apiVersion", "")).startswith(group + "/"):
                continue
            seen += 1
            where = f"{path}[{i}] {kind} {doc.get('metadata', {}).get('name')!r}"
            schema = schemas.get(doc["apiVersion"])
            if schema is None:
                problems.append(f"{where}: apiVersion {doc['apiVersion']} not served by the CRD ({sorted(schemas)})")
                continue
            if not (doc.get("metadata") or {}).get("name"):
                problems.append(f"{where}: metadata.name is required")
            # metadata is validated by the API server itself, not by the CRD schema.
            body = {k: v for k, v in doc.items() if k != "metadata"}
            sub = dict(schema, properties={k: v for k, v in schema.get("properties", {}).items() if k != "metadata"})
            for err in jsonschema.Draft7Validator(sub).iter_errors(body):
                loc = "/".join(str(p) for p in err.absolute_path) or "(root)"
                problems.append(f"{where}: {loc}: {err.message}")
    if seen == 0:
        problems.append(f"no {kind} ({group}) object found in {paths}")
    for p in problems:
        print(f"  {p}")
    if not problems:
        print(f"ok: {seen} {kind} object(s) valid against {crd_path}")
    return 1 if problems else 0


if __name__ == "__main__":
    if len(sys.argv) < 3:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    sys.exit(main(sys.argv[1], sys.argv[2:]))
