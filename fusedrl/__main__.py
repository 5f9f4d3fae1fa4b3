"""``python -m fusedrl`` runs the ``fusedrl`` command line."""
import sys

from fusedrl.engine.cli import main

sys.exit(main())
