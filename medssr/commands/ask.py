"""``medssr ask --url URL "question"``: ask a served model; prints its reasoning and the answer letter."""

from __future__ import annotations


def _ask(args) -> int:
    from medssr.errors import UserError, user_input
    from medssr.serving.client import AskConfig, run_ask

    with user_input():
        config = AskConfig(
            url=args.url, question=args.question, options=args.option or [], model=args.model,
            max_tokens=args.max_tokens, temperature=args.temperature, timeout_s=args.timeout,
        )
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
    parser = subparsers.add_parser(
        "ask", help="Ask a served model a question (OpenAI-compatible API); prints the reasoning and the letter."
    )
    parser.add_argument("question", help="The question; end it with 'A. ...' lines, or give --option for each option.")
    parser.add_argument("--url", required=True, help="Server URL, e.g. http://127.0.0.1:8080.")
    parser.add_argument("--option", action="append", metavar="TEXT", help="An option's text (repeat: A, B, C, ...).")
    parser.add_argument("--model", default="", help="Served model name (default: the server's first model).")
    parser.add_argument("--max-tokens", type=int, default=512, help="Longest reply in tokens (default: 512).")
    parser.add_argument("--temperature", type=float, default=0.0, help="Sampling temperature (default: 0, greedy).")
    parser.add_argument("--timeout", type=float, default=300.0, help="Request timeout in seconds (default: 300).")
    parser.set_defaults(func=_ask)
