"""Reports: tables, CSV/JSON and plots of a run."""

from edgekd.report.writer import write_report

__all__ = ["write_report"]
