"""The runner: run context, papermill pipeline, locks, fingerprints and pre-flight checks.
"""
