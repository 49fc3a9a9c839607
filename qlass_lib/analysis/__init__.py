"""What a finished result means: failure tables per environment and the whole cost of a run.
"""
