#!/usr/bin/env python3
"""Extracts seed inputs for the fuzz targets from the tests, fixtures and
examples into fuzz/seeds/<target>/ (small files, committed).

    python3 fuzz/seeds.py

Re-running replaces the extracted seeds; hand-written seeds (names not
starting with `x-`) are kept.
"""

import base64
import hashlib
import json
import pathlib
import re

import yaml

FUZZ = pathlib.Path(__file__).resolve().parent
ROOT = FUZZ.parent
SHARED = ROOT.parent / "shared" / "fixtures" / "manifests"
MAX_SEEDS = 400


def rust_strings(path):
    """Plain and raw string literals of a Rust file, unescaped (simply)."""
    text = path.read_text()
    out = [m.group(1) for m in re.finditer(r'r#"(.*?)"#', text, re.S)]
    text = re.sub(r'r#".*?"#', "", text, flags=re.S)
    for m in re.finditer(r'"((?:[^"\\\n]|\\.)*)"', text):
        s = m.group(1)
        s = s.replace('\\"', '"').replace("\\\\", "\\").replace("\\n", "\n").replace("\\t", "\t")
        out.append(s)
    return out


def manifests():
    for directory in (ROOT / "tests" / "fixtures" / "manifests", SHARED):
        if directory.is_dir():
            for path in sorted(directory.glob("*.yaml")):
                try:
                    yield from (d for d in yaml.safe_load_all(path.read_text()) if isinstance(d, dict))
                except yaml.YAMLError:
                    continue


def pod_templates():
    for document in manifests():
        kind = document.get("kind")
        spec = document.get("spec") or {}
        if kind == "Pod":
            yield document.get("metadata") or {}, spec
        elif kind == "CronJob":
            template = ((spec.get("jobTemplate") or {}).get("spec") or {}).get("template") or {}
            yield template.get("metadata") or {}, template.get("spec") or {}
        elif isinstance(spec.get("template"), dict):
            template = spec["template"]
            yield template.get("metadata") or {}, template.get("spec") or {}


def write(target, seeds):
    directory = FUZZ / "seeds" / target
    directory.mkdir(parents=True, exist_ok=True)
    for old in directory.glob("x-*"):
        old.unlink()
    unique = sorted(set(s if isinstance(s, bytes) else s.encode() for s in seeds))[:MAX_SEEDS]
    for seed in unique:
        name = "x-" + hashlib.sha1(seed).hexdigest()[:16]
        (directory / name).write_bytes(seed)
    print(f"{target}: {len(unique)} seeds")


def reference_seeds():
    seeds = [s for s in rust_strings(ROOT / "connector" / "tests" / "reference.rs") if s and len(s) < 400]
    seeds += [c.get("image") for _, spec in pod_templates() for field in ("containers", "initContainers")
              for c in spec.get(field) or [] if isinstance(c, dict) and isinstance(c.get("image"), str)]
    seeds = [s for s in seeds if s and "{" not in s]
    relocations = [f"{s}\nproxy.example.com:8443\nnamespaces/team/connectors/harbor" for s in seeds[:50]]
    relocations += ["nginx\nproxy\nnamespaces/a/connectors/b", "ghcr.io/a\ndocker.io\n", "a/b\nindex.docker.io\nc"]
    return seeds + relocations


def challenge_seeds():
    seeds = []
    for path in [ROOT / "proxy" / "src" / "challenge.rs", ROOT / "proxy" / "src" / "realm.rs",
                 ROOT / "proxy" / "src" / "reverse.rs", ROOT / "tests" / "reverse_proxy_scripted.rs",
                 ROOT / "tests" / "reverse_proxy.rs"]:
        seeds += [s for s in rust_strings(path)
                  if re.match(r"(?i)\s*(basic|bearer|negotiate|digest|newauth|\w+ realm)", s) and len(s) < 600]
    return seeds


def route_seeds():
    seeds = []
    for path in [ROOT / "proxy" / "src" / "route.rs", ROOT / "proxy" / "src" / "reverse.rs",
                 ROOT / "proxy" / "tests" / "protocol.rs", ROOT / "tests" / "reverse_proxy.rs",
                 ROOT / "tests" / "forward_proxy.rs"]:
        seeds += [s.split("?")[0] for s in rust_strings(path) if s.startswith("/v2")]
    sha = "sha256:" + "a" * 64
    seeds += [f"/v2/namespaces/team/connectors/harbor/app/manifests/{sha}",
              f"/v2/app/blobs/{sha}\nteam/harbor", "/v2/a/b/tags/list\nteam/harbor",
              "/v2/namespaces/team/connectors/harbor/a/blobs/uploads/", "/v2/x/blobs/uploads/abc-=.\nteam/harbor"]
    return [s for s in seeds if "{" not in s]


def admission_seeds():
    seeds = []
    for i, (metadata, spec) in enumerate(pod_templates()):
        for namespace in ("defaults", "opted", "team"):
            pod = {"apiVersion": "v1", "kind": "Pod", "metadata": dict(metadata, name=f"p{i}"), "spec": spec}
            if namespace == "team":
                pod["metadata"]["annotations"] = dict(pod["metadata"].get("annotations") or {},
                                                      **{"connectors.cpaas.io/connector": "harbor,local"})
            review = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                      "request": {"uid": f"u{i}", "kind": {"group": "", "version": "v1", "kind": "Pod"},
                                  "operation": "CREATE", "namespace": namespace, "object": pod}}
            # The first byte selects raw mode (odd) in fuzz_targets/admission.rs.
            seeds.append(b"\x01" + json.dumps(review, separators=(",", ":")).encode())
    return seeds


def store_seeds():
    seeds = [p.read_text() for p in [ROOT / "examples" / "store.yaml", ROOT / "examples" / "local" / "store.yaml",
                                     ROOT / "tests" / "fixtures" / "fixture-store.yaml",
                                     ROOT / "webhook" / "tests" / "mutation-store.yaml"]]
    seeds += [s for s in rust_strings(ROOT / "webhook" / "tests" / "mutation.rs") if "kind: Connector" in s]
    seeds += [s for s in rust_strings(ROOT / "connector" / "src" / "store" / "file.rs") if "kind:" in s]
    return seeds


def connect_head_seeds():
    basic = lambda user, password: "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    return [basic("team%2Fharbor", "tok"), basic("team/harbor,local", "a:b"), basic("", "t"), "Bearer abc.def",
            "bearer  x ", "Basic", "harbor", "team/harbor, team/local", "harbor.example.com:443",
            "[::1]:443", "127.0.0.1:5000", "http://127.0.0.1:5000/v2/", "http://[fe80::1]/v2/x",
            "HTTP://Harbor.Example.COM:8080/v2/", "*.example.com", "*.example.com:443", "registry.local:5000"]


if __name__ == "__main__":
    write("reference", reference_seeds())
    write("challenge", challenge_seeds())
    write("route", route_seeds())
    write("admission", admission_seeds())
    write("store_yaml", store_seeds())
    write("connect_head", connect_head_seeds())
