"""esol_lib: ESOL (Expansion and Shrinkage of Localization, NeurIPS 2022) for WSSS."""

__version__ = "0.1.0"
