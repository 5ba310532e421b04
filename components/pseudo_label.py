"""Component: self-consistency pseudo-labels from the base policy, with the precision/yield audit."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Markdown, Metrics, Output

from medssr.components.image import GPU_IMAGE


@dsl.component(base_image=GPU_IMAGE, install_kfp_package=False)
def pseudo_label(
    parent_run_id: str,
    tracking_uri: str,
    experiment: str,
    base_model: str,
    items: Input[Dataset],
    synthesis_stats: Input[Artifact],
    n_samples: int,
    min_agreement: float,
    max_agreement: float,
    min_parsed: int,
    max_tokens: int,
    answer_letters: str,
    backend: str,
    device: str,
    batch_size: int,
    recovery: bool,
    labeled: Output[Dataset],
    audit: Output[Markdown],
    metrics: Output[Metrics],
):
    from medssr.components.steps import pseudo_label_step

    pseudo_label_step(
        parent_run_id, tracking_uri, experiment, base_model, items.path, synthesis_stats.path, n_samples,
        min_agreement, max_agreement, min_parsed, max_tokens, answer_letters, backend, device, batch_size,
        labeled, audit, metrics, recovery=recovery,
    )
