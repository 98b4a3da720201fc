"""Figures for the book and the command line, one module per area (data, training, explain, cluster, scan).

Every function returns a matplotlib Figure (or Axes) and never calls ``plt.show()``.
"""
