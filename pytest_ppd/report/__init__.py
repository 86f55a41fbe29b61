"""Reporting: the only layer that writes to the terminal or renders files."""
