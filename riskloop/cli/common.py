"""What every command module shares: the console on stderr (stdout carries JSON for scripts)."""

from rich.console import Console

console = Console(stderr=True)
