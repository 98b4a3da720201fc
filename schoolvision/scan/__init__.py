"""Whole scenes: streaming windows into a probability raster, candidate schools, evaluation and the web map."""
