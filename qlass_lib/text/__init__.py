"""Text: the one prompt format and action parser, expert trajectories, padding/collation, BC data copies and
paraphrases.
"""
