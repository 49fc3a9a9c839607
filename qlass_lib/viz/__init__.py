"""Figures, the ipywidgets tree viewer and the self-contained HTML tree inspector.
"""
