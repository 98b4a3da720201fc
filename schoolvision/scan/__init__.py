"""Whole scenes: streaming windows into a probability raster, candidate schools, evaluation and the web map.

``windows`` (where windows go, how they are read and scored) and ``probability`` (blending them
into the GeoTIFF) serve ``scene`` (one scene); ``runner`` scans many scenes for ``schoolvision scan``
and hands the rasters to ``candidates``, ``peaks`` (grad-CAM), ``evaluation``, ``registry`` (the
``--registry`` audit) and ``webmap``.
"""
