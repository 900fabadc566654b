"""The `mor-edge` command line: the group in `app`, one module per command or pair of
commands, what they print in `formatting`. Importing this registers every command."""

from . import (  # noqa: F401 (each module registers its commands on `main`)
    calibrate_command,
    check_commands,
    engine_command,
    export_command,
    info_command,
    train_commands,
    upscale_command,
)
from .app import main

__all__ = ["main"]
