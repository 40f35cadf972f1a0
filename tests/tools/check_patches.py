"""Independent check of `connectors mutate` output.

For one manifest: applies every JSON patch printed by `mutate --patch` with
the `jsonpatch` library (RFC 6902, strict) to the original objects parsed by
PyYAML, compares the result with the YAML printed by `mutate`, and validates
every patched pod (or pod template, as a Pod) with kubernetes-validate in
strict mode. Prints one line per checked object; exits non-zero on any
mismatch.
"""
import json
import sys

import jsonpatch
import jsonpointer
import kubernetes_validate
import yaml

TEMPLATE = {
    "Pod": [],
    "Deployment": ["spec", "template"],
    "StatefulSet": ["spec", "template"],
    "DaemonSet": ["spec", "template"],
    "ReplicaSet": ["spec", "template"],
    "ReplicationController": ["spec", "template"],
    "Job": ["spec", "template"],
    "CronJob": ["spec", "jobTemplate", "spec", "template"],
}
K8S_VERSION = "1.33.0"


def objects(text):
    for doc in yaml.safe_load_all(text):
        if doc is None:
            continue
        if doc.get("kind") == "List":
            yield from doc.get("items") or []
        else:
            yield doc


def main():
    manifest, patches_file, mutated_file = sys.argv[1:4]
    originals = list(objects(open(manifest).read()))
    patches = json.load(open(patches_file))
    mutated = list(objects(open(mutated_file).read()))
    if len(originals) != len(mutated):
        sys.exit(f"{manifest}: {len(originals)} objects in, {len(mutated)} out")
    failures = 0
    next_patch = 0
    for original, printed in zip(originals, mutated):
        kind = original.get("kind")
        if kind not in TEMPLATE:
            if original != printed:
                print(f"FAIL {kind}: a non-workload object changed")
                failures += 1
            continue
        name = (original.get("metadata") or {}).get("name", "?")
        expected = original
        if next_patch < len(patches) and patches[next_patch]["kind"] == kind and patches[next_patch]["name"] == name:
            try:
                expected = jsonpatch.apply_patch(original, patches[next_patch]["patch"])
            except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException) as error:
                print(f"FAIL {kind}/{name}: the patch does not apply: {error}")
                failures += 1
                continue
            next_patch += 1
        if expected != printed:
            print(f"FAIL {kind}/{name}: the patched object differs from the printed one")
            failures += 1
            continue
        pod = expected
        for token in TEMPLATE[kind]:
            pod = pod[token]
        as_pod = {"apiVersion": "v1", "kind": "Pod", "metadata": dict(pod.get("metadata") or {}), "spec": pod["spec"]}
        as_pod["metadata"].setdefault("name", name)
        try:
            kubernetes_validate.validate(as_pod, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            print(f"FAIL {kind}/{name}: not a valid Pod: {error.message}")
            failures += 1
            continue
        print(f"ok {kind}/{name}")
    if next_patch != len(patches):
        print(f"FAIL: {len(patches) - next_patch} patches were not matched to objects")
        failures += 1
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
