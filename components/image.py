"""The container images the components run in on a cluster, fixed when the pipeline is built.

``MEDSSR_IMAGE`` (CPU steps) and ``MEDSSR_GPU_IMAGE`` (steps that generate: labelling, evaluation,
local-launcher training) override the defaults, the Dockerfile's ``cpu`` and ``gpu`` targets, declared in
:mod:`medssr.cluster` with the rest of what medssr knows about the cluster. Under kfp.local the same
components run as subprocesses of the current environment.
"""

from medssr.cluster import DEFAULT_GPU_IMAGE, DEFAULT_IMAGE, cpu_image, gpu_image

IMAGE = cpu_image()
GPU_IMAGE = gpu_image()

__all__ = ["DEFAULT_GPU_IMAGE", "DEFAULT_IMAGE", "GPU_IMAGE", "IMAGE"]
