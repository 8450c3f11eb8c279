"""``python -m manifest``: the same as the ``manifest`` command."""

from manifest.entry import main

main()
