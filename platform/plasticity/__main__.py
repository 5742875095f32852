"""``python -m plasticity`` is the ``plasticity`` command."""

from .cli import main

main()
