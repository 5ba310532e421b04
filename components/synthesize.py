"""Component: knowledge-grounded, distribution-controlled synthesis (cacheable: parameters in, artifacts out)."""

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Metrics, Output

from medssr.components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def synthesize(
    n: int,
    rare_ratio: float,
    seed: int,
    options_per_item: int,
    seed_questions: str,
    benchmarks_dir: str,
    split_benchmark: str,
    stage2_size: int,
    stage2_data: str,
    decontaminate: bool,
    items: Output[Dataset],
    stats: Output[Artifact],
    shares: Output[Metrics],
    chart: Output[HTML],
):
    from medssr.components.steps import synthesize_step

    synthesize_step(
        n, rare_ratio, seed, options_per_item, seed_questions, benchmarks_dir, split_benchmark,
        stage2_size, stage2_data, decontaminate, items, stats, shares, chart,
    )
