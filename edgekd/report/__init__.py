"""Reports: tables, CSV/JSON and plots of a run (``edgekd.report.writer.write_report``).

Nothing is imported here: `edgekd bench` prints its table with ``edgekd.report.tables`` on a device without
matplotlib, which the plots (and so the writer) need.
"""
