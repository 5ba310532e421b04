"""``medssr train``: one GRPO stage (self = pseudo-labels, supervised = gold answers), in-process, via torchrun, or
as a PyTorchJob / TrainJob on the cluster (``--launcher``; ``--dry-run`` prints the job and submits nothing)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SUMMARY_KEYS = ("global_step", "world_size", "resumed_from_step", "records", "records_rejected", "reward_first", "reward_last", "train_runtime")
CLUSTER_LAUNCHERS = ("pytorchjob", "trainjob")


def _train(args) -> int:
    from medssr.errors import UserError
    from medssr.configs import from_args
    from medssr.training.config import TrainingConfig

    config = from_args(TrainingConfig, args, section=args.stage_section, output_dir=args.output_dir)
    config.validate_paths()
    if args.launcher:
        return _on_cluster(config, args)
    if args.dry_run:
        raise UserError("--dry-run prints a cluster job: give --launcher pytorchjob or trainjob")
    if args.nproc_per_node is not None:
        if args.nproc_per_node < 1:
            raise UserError("--nproc-per-node must be at least 1")
        return _torchrun(config, args.nproc_per_node)

    import logging

    from medssr.training import run_training

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    result = run_training(config)
    _print_summary(result.model_dir, result.metrics)
    return 0


def _torchrun(config, nproc: int) -> int:
    """Run the entry point under torchrun with the resolved config written beside the output."""
    output_dir = Path(config.output_dir)
    config_path = output_dir / "train-config.yaml"
    config.to_yaml(config_path)
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
        "-m", "medssr.training", "--config", str(config_path),
    ]
    print("running:", " ".join(command), file=sys.stderr)
    status = subprocess.run(command, check=False).returncode
    if status != 0:
        print(f"medssr train: torchrun exited with status {status}", file=sys.stderr)
        return status
    metrics = json.loads((output_dir / "metrics.json").read_text(encoding="utf-8"))
    _print_summary(output_dir, metrics)
    return 0


def cluster_job(config, args):
    """(launcher, JobSpec) of the cluster job for this stage. Resources and placement come from the cluster settings
    (``--cluster-config``, else the MEDSSR_* environment of a pod that loads ConfigMap medssr-config) where the
    options leave them open."""
    from dataclasses import asdict

    from medssr.errors import UserError, user_input
    from medssr.launch import (
        JobSpec,
        PyTorchJobLauncherConfig,
        TrainJobLauncherConfig,
        VolumeMount,
        build_launcher,
    )

    if not args.run_id or not args.image:
        raise UserError(f"--launcher {args.launcher} needs --run-id and --image")
    defaults = _cluster_defaults(args.cluster_config)
    train = defaults.train if defaults else None
    volumes = []
    for index, item in enumerate(args.pvc):
        claim, _, mount_path = item.partition(":")
        if not claim or not mount_path.startswith("/"):
            raise UserError(f"--pvc {item!r}: expected CLAIM:/MOUNT/PATH")
        volumes.append(VolumeMount(name=f"pvc-{index}", claim_name=claim, mount_path=mount_path))
    gpus = args.gpus_per_node if args.gpus_per_node is not None else (train.gpus if train else 0)
    with user_input():  # the job's settings are the options given
        spec = JobSpec(
            run_id=args.run_id,
            stage=f"train-{config.stage}",
            training={key: value for key, value in asdict(config).items() if value is not None},
            image=args.image,
            nproc_per_node=args.nproc_per_node or max(1, gpus),
            num_workers=args.num_workers if args.num_workers is not None else (defaults.train_workers if defaults else 0),
            gpus_per_node=gpus,
            cpu=args.cpu or (train.cpu if train else None),
            memory=args.memory or (train.memory if train else None),
            shm_size=args.shm_size,
            volumes=volumes,
        )
    config_class = {"pytorchjob": PyTorchJobLauncherConfig, "trainjob": TrainJobLauncherConfig}[args.launcher]
    launcher_config = config_class(
        namespace=args.namespace or (defaults.namespace if defaults else os.environ.get("MEDSSR_NAMESPACE", "default")),
        kubeconfig=args.kubeconfig,
        context=args.context,
        service_account_name=args.service_account,
        node_selector=dict(train.node_selector) if train else {},
        tolerations=list(train.tolerations) if train else [],
    )
    return build_launcher(launcher_config), spec


def _cluster_defaults(path: str | None):
    """ClusterDefaults from a YAML file (the medssr-config ConfigMap, alone or among other documents, or its data
    mapping), else from the environment when it carries the settings, else None."""
    from medssr.cluster import ClusterDefaults
    from medssr.errors import UserError

    if path:
        import yaml

        documents = [doc for doc in yaml.safe_load_all(Path(path).read_text(encoding="utf-8")) if doc]
        config_maps = [doc for doc in documents if doc.get("kind") == "ConfigMap" and doc["metadata"]["name"] == "medssr-config"]
        data = config_maps[0]["data"] if config_maps else documents[0] if len(documents) == 1 else None
        if not isinstance(data, dict):
            raise UserError(f"{path}: no ConfigMap medssr-config and not a single mapping of its settings")
        return ClusterDefaults.from_mapping(data, source=path)
    if os.environ.get("MEDSSR_TRAIN_GPUS") is not None:
        return ClusterDefaults.from_mapping(os.environ, source="environment (medssr-config)")
    return None


def _on_cluster(config, args) -> int:
    launcher, spec = cluster_job(config, args)
    if args.dry_run:
        from medssr.kube.manifests import manifest_yaml

        print(manifest_yaml(launcher.build_object(spec)), end="")
        return 0
    from medssr.launch import TrainingJobFailed, run_training_job

    try:
        status = run_training_job(launcher.config, spec, timeout=args.timeout)
    except TrainingJobFailed as error:
        print(f"medssr train: {error}", file=sys.stderr)
        return 1
    print(f"{launcher.kind} {launcher.config.namespace}/{spec.job_name}: {status}")
    return 0


def _print_summary(model_dir, metrics: dict) -> None:
    print(json.dumps({"model_dir": str(model_dir), **{k: metrics.get(k) for k in SUMMARY_KEYS}}))


def register(subparsers) -> None:
    from medssr.configs import add_arguments
    from medssr.training.config import TrainingConfig

    parser = subparsers.add_parser(
        "train",
        help="GRPO training stage: --stage self (pseudo-labels) or supervised (gold answers).",
        description="Train one GRPO stage on TRL. Every TrainingConfig field is an option; --config YAML gives defaults.",
    )
    parser.add_argument("--out", dest="output_dir", default=None, help="Output folder: the trained model, metrics.json, log_history.jsonl, checkpoints/.")
    parser.add_argument("--config", default=None, help="YAML file of TrainingConfig fields, or a pipeline preset (its section "
                        "--stage-section); options given here override it.")
    parser.add_argument("--stage-section", default="train_self", choices=("train_self", "train_supervised"),
                        help="The section read from a pipeline preset given as --config (default train_self).")
    parser.add_argument(
        "--nproc-per-node", type=int, default=None,
        help="Run through torchrun with this many processes (data parallel; gloo on CPU) instead of in-process; "
             "with --launcher, processes per node of the job (default: its GPUs per node, at least 1).",
    )
    cluster = parser.add_argument_group("cluster job (--launcher); paths in the training options are the pods' paths")
    cluster.add_argument("--launcher", choices=CLUSTER_LAUNCHERS, default=None, help="Train as a PyTorchJob or a Trainer v2 TrainJob and wait for it.")
    cluster.add_argument("--dry-run", action="store_true", help="With --launcher: print the job object as YAML; submit nothing.")
    cluster.add_argument("--run-id", default=None, help="Run id: names the job (RUN_ID-train-STAGE) and labels it.")
    cluster.add_argument("--image", default=None, help="Container image with medssr installed.")
    cluster.add_argument("--namespace", default=None, help="Namespace of the job (default: the cluster settings', else MEDSSR_NAMESPACE or default).")
    cluster.add_argument("--num-workers", type=int, default=None, help="Nodes besides the first (default: MEDSSR_TRAIN_WORKERS of the cluster settings, else 0).")
    cluster.add_argument("--gpus-per-node", type=int, default=None, help="nvidia.com/gpu of each node's pod (default: MEDSSR_TRAIN_GPUS, else 0).")
    cluster.add_argument("--cpu", default=None, help="CPU request of each node's pod (default: MEDSSR_TRAIN_CPU).")
    cluster.add_argument("--memory", default=None, help="Memory request and limit of each node's pod (default: MEDSSR_TRAIN_MEMORY).")
    cluster.add_argument("--shm-size", default=None, help="Size limit of the memory-backed /dev/shm (GPU pods always get one).")
    cluster.add_argument("--service-account", default=None, help="Service account of the training pods.")
    cluster.add_argument("--pvc", action="append", default=[], metavar="CLAIM:/PATH", help="Mount a PersistentVolumeClaim in every pod (repeatable).")
    cluster.add_argument("--cluster-config", default=None, metavar="YAML",
                         help="The medssr-config ConfigMap (e.g. `kubectl kustomize manifests/overlays/gpu`): GPUs, CPU, memory, "
                              "workers and placement of the training pods (default: the MEDSSR_* environment, when set).")
    cluster.add_argument("--kubeconfig", default=None, help="kubeconfig file (default: in-cluster, else ~/.kube/config).")
    cluster.add_argument("--context", default=None, help="kubeconfig context (default: the current one).")
    cluster.add_argument("--timeout", type=float, default=None, help="Seconds to wait for the job (default: no limit).")
    add_arguments(parser, TrainingConfig, skip=("output_dir",))
    parser.set_defaults(func=_train)
