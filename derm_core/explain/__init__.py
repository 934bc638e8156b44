"""Explanations: Grad-CAM family and LIME maps, biopsy site, lesion geometry, map checks, similar cases.

All map coordinates go through maps.CoverGeometry.
"""
