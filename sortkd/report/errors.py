"""Errors the report raises for bad or incomplete input."""


class ReportInputError(ValueError):
    """The run folders, the published table or the arguments cannot be reported as given."""
