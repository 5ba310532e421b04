"""Import kserve without letting it read our command line.

``kserve/__init__`` imports ``kserve.model_server``, which parses ``sys.argv`` with ``parse_known_args``
at import time; argparse's prefix matching would take our own options for its (``--model`` for
``--model_name``, pytest's ``--timeout`` for ``--timeout-keep-alive``). Every medssr module imports
kserve through here, first.
"""

from __future__ import annotations

import sys


def import_kserve():
    if "kserve" not in sys.modules:
        saved, sys.argv = sys.argv, sys.argv[:1]
        try:
            import kserve  # noqa: F401
        finally:
            sys.argv = saved
    import kserve

    return kserve
