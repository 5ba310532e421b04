"""Package discovery under pyproject.toml's package-dir mapping (components/ is medssr.components, and so on).

setuptools' own discovery names a package after its folder, so it cannot find medssr.components in components/;
here every mapped folder is searched and its packages are named under the mapping. Folders without an
__init__.py count (pipelines/compiled ships YAML), so nothing under a mapped folder is left out of an install.
"""

import tomllib
from pathlib import Path

from setuptools import find_namespace_packages, setup

HERE = Path(__file__).resolve().parent
PACKAGE_DIR = tomllib.loads((HERE / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]


def mapped_packages(package_dir: dict[str, str]) -> list[str]:
    found = set()
    for name, folder in package_dir.items():
        found.add(name)
        found.update(f"{name}.{sub}" for sub in find_namespace_packages(where=HERE / folder, exclude=["*__pycache__*"]))
    return sorted(found)


setup(packages=mapped_packages(PACKAGE_DIR))
