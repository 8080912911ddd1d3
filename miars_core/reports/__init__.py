"""The reports: an attack's result files (``report``), a run folder's tables, plots and HTML
(``gridreport``), the defense benchmark's tables and privacy-utility frontier (``defensereport``),
and what the last two share (``shared``). On top of the engine; only the command line sits above.
"""
