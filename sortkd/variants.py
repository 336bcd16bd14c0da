"""The run variants: the baseline, the SortKD transform, and the swap ablation.

Kept free of torch so that the CLI and the report can name them without importing it.
"""
VARIANTS = ("base", "sort", "swap")
