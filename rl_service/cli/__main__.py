"""`python -m rl_service.cli ...` = `rl-service ...` (what Ray Jobs entrypoints run)."""

import sys

from rl_service.cli.main import main

sys.exit(main())
