"""The labels every object medssr creates carries (PyTorchJobs, TrainJobs, InferenceServices, their pods), so one
label selector finds a whole run: ``kubectl get ... -l medssr.io/run-id=RUN_ID``."""

from __future__ import annotations

import re

from medssr.errors import UserError

RUN_ID_LABEL = "medssr.io/run-id"
STAGE_LABEL = "medssr.io/stage"
COMPONENT_LABEL = "app.kubernetes.io/component"
PART_OF_LABEL = "app.kubernetes.io/part-of"
APP_NAME = "medssr"

# A label value: at most 63 characters, alphanumerics at both ends, '-', '_', '.' inside (or empty).
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def validate_label_value(value: str, field: str) -> str:
    """Return ``value`` if Kubernetes accepts it as a label value, else raise UserError naming ``field``."""
    if not isinstance(value, str) or len(value) > 63 or not _LABEL_VALUE.match(value):
        raise UserError(
            f"{field}={value!r} is not a valid Kubernetes label value "
            "(at most 63 characters: letters, digits, '-', '_', '.', starting and ending alphanumeric)"
        )
    return value


def standard_labels(run_id: str, stage: str, component: str) -> dict[str, str]:
    """The labels every medssr-created object carries.

    ``stage`` is the pipeline stage (e.g. ``train-self``, ``train-supervised``, ``serve``); ``component``
    is the kind of workload (e.g. ``trainer``, ``predictor``).
    """
    return {
        RUN_ID_LABEL: validate_label_value(run_id, "run_id"),
        STAGE_LABEL: validate_label_value(stage, "stage"),
        "app.kubernetes.io/name": APP_NAME,
        COMPONENT_LABEL: validate_label_value(component, "component"),
        PART_OF_LABEL: APP_NAME,
        "app.kubernetes.io/managed-by": APP_NAME,
    }


def run_selector(run_id: str) -> str:
    """The label selector that finds every object of one run."""
    return f"{RUN_ID_LABEL}={validate_label_value(run_id, 'run_id')}"
