"""Sample quality of a workdir (tables, plots, claims) and performance."""
