"""`rl-service` commands: one module per command group, thin (parse, call the library, exit code)."""

from rl_service.cli.main import main

__all__ = ["main"]
