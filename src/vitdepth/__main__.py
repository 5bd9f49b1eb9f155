"""``python -m vitdepth`` (also under torchrun)."""

from .cli import main

raise SystemExit(main())
