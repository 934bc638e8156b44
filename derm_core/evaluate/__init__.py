"""Metrics and reports: the one metric engine, the Model lab's operating points, cached embeddings.

Also the plotly figures and table views the pages show.
"""
