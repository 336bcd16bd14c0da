"""The report stage: an experiment's run folders -> runs.csv, the paper's tables, paired
statistics and plots.

Modules: ``runs`` (reading run folders, missing runs, the input error), ``stats`` (paired
deltas, intervals, resolution, detectable effect), ``tables`` (labels, published numbers, the
tables and their Markdown/CSV/LaTeX), ``plots`` (PNG figures), ``build`` (the ``report``
command and ``build_report``).
"""
