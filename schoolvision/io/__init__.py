"""Georeferenced input and output: atomic writes, rasters and vectors, imagery sources, school labels."""
