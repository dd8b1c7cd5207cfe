"""Entry point of ``python -m workloads.face_compare`` (see cli.py)."""

import sys

from workloads.face_compare.cli import main

sys.exit(main())
