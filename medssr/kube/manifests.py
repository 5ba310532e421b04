"""Objects as YAML for ``kubectl apply -f -`` and for reading (``--dry-run``)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any


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
