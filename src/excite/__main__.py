"""``python -m excite ...`` (also what ``torchrun -m excite train ...`` runs)."""

from excite.cli import main

raise SystemExit(main())
