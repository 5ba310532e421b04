"""The container images the components run in on a cluster (a setting read when the pipeline is built).

``MEDSSR_IMAGE`` (CPU steps) and ``MEDSSR_GPU_IMAGE`` (steps that generate: labelling, evaluation,
local-launcher training) override the defaults, which are the Dockerfile's ``cpu`` and ``gpu``
targets. Under kfp.local the same components run as subprocesses of the current environment.
"""

import os

DEFAULT_IMAGE = "ghcr.io/medssr/medssr:0.1.0-cpu"
DEFAULT_GPU_IMAGE = "ghcr.io/medssr/medssr:0.1.0-gpu"

IMAGE = os.environ.get("MEDSSR_IMAGE", DEFAULT_IMAGE)
GPU_IMAGE = os.environ.get("MEDSSR_GPU_IMAGE", DEFAULT_GPU_IMAGE)
