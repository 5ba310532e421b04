"""Component: one GRPO stage through a launcher (local torchrun, PyTorchJob or TrainJob); returns the model folder."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from medssr.components.image import GPU_IMAGE


@dsl.component(base_image=GPU_IMAGE, install_kfp_package=False)
def train(
    parent_run_id: str,
    tracking_uri: str,
    experiment: str,
    run_id: str,
    workspace: str,
    stage: str,
    base_model: str,
    data: Input[Dataset],
    launcher: str,
    namespace: str,
    image: str,
    workspace_pvc: str,
    s3_secret: str,
    nproc_per_node: int,
    num_workers: int,
    gpus_per_node: int,
    max_steps: int,
    num_generations: int,
    batch_size: int,
    learning_rate: float,
    beta: float,
    max_completion_length: int,
    temperature: float,
    save_steps: int,
    seed: int,
    use_vllm: bool,
    vllm_tensor_parallel_size: int,
    vllm_gpu_memory_utilization: float,
    timeout_s: int,
    model: Output[Model],
    metrics: Output[Metrics],
) -> str:
    from medssr.components.steps import train_step

    return train_step(
        parent_run_id, tracking_uri, experiment, run_id, workspace, stage, base_model, data.path, launcher,
        namespace, image, workspace_pvc, s3_secret, nproc_per_node, num_workers, gpus_per_node, max_steps,
        num_generations, batch_size, learning_rate, beta, max_completion_length, temperature, save_steps, seed,
        use_vllm, vllm_tensor_parallel_size, vllm_gpu_memory_utilization, timeout_s, model, metrics,
    )
