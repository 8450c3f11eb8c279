"""``python -m manifest``: the same as the ``manifest`` command."""

from manifest.cli import main

main()
