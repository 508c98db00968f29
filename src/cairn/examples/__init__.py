"""Example applications built with cairn."""
