"""A FastAPI app that hands text to a taskflow worker and reports the outcome (see README.md)."""
