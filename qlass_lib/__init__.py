"""qlass_lib: the library behind the QLASS notebook series (all logic lives here; notebooks only wire it)."""
__version__ = "0.1.0"
