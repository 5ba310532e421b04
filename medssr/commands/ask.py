"""``medssr ask --url URL "question"``: ask a served model; prints its reasoning and the answer letter."""

from __future__ import annotations


def _ask(args) -> int:
    from medssr.configs import from_args
    from medssr.errors import UserError
    from medssr.ask import AskConfig, run_ask

    config = from_args(AskConfig, args)
    try:
        result = run_ask(config)
    except ConnectionError as exc:
        raise UserError(str(exc)) from None
    print(result.text.strip())
    print()
    if not result.options:
        print("Answer: (not a multiple-choice question)")
    elif result.answer:
        print(f"Answer: {result.answer}. {result.options[result.answer]}")
    else:
        print(f"Answer: none of {result.letters} could be read from the reply")
    return 0


def register(subparsers) -> None:
    from medssr.configs import add_arguments
    from medssr.ask import AskConfig

    parser = subparsers.add_parser(
        "ask", help="Ask a served model a question (OpenAI-compatible API); prints the reasoning and the letter."
    )
    parser.add_argument("--config", help="YAML of AskConfig settings (url, model, max_tokens, ...); options override it.")
    add_arguments(parser, AskConfig, positional={"question": "QUESTION"}, aliases={"options": ("--option",), "timeout_s": ("--timeout",)})
    parser.set_defaults(func=_ask)
