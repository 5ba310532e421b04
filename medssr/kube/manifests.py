"""Objects as the API takes them (``custom_object``) and as YAML for ``kubectl apply -f -`` and for reading (``--dry-run``)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any


def custom_object(
    group: str, version: str, kind: str, name: str, namespace: str, labels: Mapping[str, str], spec: dict[str, Any], **metadata: Any
) -> dict[str, Any]:
    """A namespaced object of ``kind`` in API ``group/version``; ``metadata`` adds fields such as annotations."""
    return {
        "apiVersion": f"{group}/{version}",
        "kind": kind,
        "metadata": {"name": name, "namespace": namespace, "labels": dict(labels), **metadata},
        "spec": spec,
    }


def manifest_yaml(obj: Mapping[str, Any]) -> str:
    """An object as YAML for ``kubectl apply -f -`` and for reading: no anchors where it shares a dict (labels), and
    strings a YAML 1.2 reader (kubectl) takes for numbers, e.g. ``1e-06`` in a command, quoted (PyYAML's 1.1 rules
    leave them plain)."""
    import yaml

    class Dumper(yaml.SafeDumper):
        def ignore_aliases(self, data) -> bool:
            return True

    Dumper.add_implicit_resolver(
        "tag:yaml.org,2002:float", re.compile(r"^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$"), list("-+.0123456789")
    )
    return yaml.dump(dict(obj), Dumper=Dumper, sort_keys=False)
