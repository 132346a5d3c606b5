"""The chat and playground page at `/` (corral/serve/playground/routes.py)."""
