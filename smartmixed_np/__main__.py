"""``python -m smartmixed_np`` runs the ``smartmixed`` command."""

from .cli import main

raise SystemExit(main())
