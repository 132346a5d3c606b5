"""The live dashboard page at `/dashboard` (corral/serve/dashboard/routes.py)."""
