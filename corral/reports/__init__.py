"""Self-contained HTML reports of `corral bench` and `corral simulate` (corral.reports.html)."""
