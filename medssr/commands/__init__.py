"""One module per ``medssr`` subcommand. Each defines ``register(subparsers)``; ``medssr.cli`` finds them.

A command module parses arguments into the stage's typed config and calls the stage function: no logic
of its own, and heavy imports inside the handler so ``medssr --help`` stays fast.
"""
