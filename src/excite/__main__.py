"""``python -m excite ...`` (also what ``torchrun -m excite train ...`` runs)."""

from .cli import main

raise SystemExit(main())
