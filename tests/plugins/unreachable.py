"""What a client needs to be pointed at a dependency that does not answer (the tests of dependencies and
faults, and bench/dead_dependencies.py)."""

from __future__ import annotations

import json
from pathlib import Path


def kubeconfig_for(server: str, folder: Path) -> Path:
    """A kubeconfig whose only context is the API server at ``server`` (TLS unchecked, a dummy token)."""
    path = folder / "kubeconfig"
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "dead",
        "clusters": [{"name": "dead", "cluster": {"server": server, "insecure-skip-tls-verify": True}}],
        "contexts": [{"name": "dead", "context": {"cluster": "dead", "user": "u"}}],
        "users": [{"name": "u", "user": {"token": "not-a-secret"}}],
    }))
    return path
