"""`python -m controller` is `gpuburst`."""

import sys

from controller.app import cli

sys.exit(cli.main())
