"""What a reference to a registered model says: ``models:/NAME@ALIAS``, ``models:/NAME/VERSION`` or ``NAME@ALIAS``.

Parsing only; :func:`medssr.registry.resolve_model_reference` finds the version, :func:`medssr.models.resolve_model`
resolves any model reference.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from medssr.errors import UserError

REGISTRY_SCHEME = "models:/"
# NAME, NAME@ALIAS or NAME/VERSION after the optional scheme (a name has no '/', '@' or space).
_REGISTRY_REFERENCE = re.compile(r"^(?P<name>[^/@\s]+)(?:@(?P<alias>[\w\-]+)|/(?P<version>\d+))?/?$")
REGISTRY_FORMS = "models:/NAME@ALIAS, models:/NAME/VERSION or NAME@ALIAS"


@dataclass(frozen=True)
class RegistryReference:
    """A version of a model in the MLflow registry, by alias or by number."""

    name: str
    alias: str | None = None
    version: str | None = None

    @classmethod
    def parse(cls, ref: str, default_alias: str | None = None) -> RegistryReference:
        """``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``, the scheme optional; a bare NAME only with a
        ``default_alias``. Anything else is a UserError."""
        text = str(ref).strip()
        match = _REGISTRY_REFERENCE.match(text.removeprefix(REGISTRY_SCHEME))
        if not match or not (match["alias"] or match["version"] or default_alias):
            forms = f"NAME, {REGISTRY_FORMS}, NAME/VERSION" if default_alias else REGISTRY_FORMS
            raise UserError(f"not a registered model reference ({forms}): {ref!r}")
        return cls(match["name"], match["alias"] or (None if match["version"] else default_alias), match["version"])

    def __str__(self) -> str:
        return f"{REGISTRY_SCHEME}{self.name}/{self.version}" if self.version else f"{REGISTRY_SCHEME}{self.name}@{self.alias}"


def registry_reference(name: str, alias_or_version: str) -> RegistryReference:
    """NAME's version by number when ``alias_or_version`` is all digits, else by alias."""
    if alias_or_version.isdigit():
        return RegistryReference(name, version=alias_or_version)
    return RegistryReference(name, alias=alias_or_version)


def registry_reference_in(ref: str) -> RegistryReference | None:
    """The registry reference ``ref`` names: ``models:/...``, or ``NAME@ALIAS`` that is not an existing path."""
    if ref.startswith(REGISTRY_SCHEME):
        return RegistryReference.parse(ref)
    if "@" in ref and not Path(ref).expanduser().exists():
        try:
            return RegistryReference.parse(ref)
        except UserError:
            return None
    return None
