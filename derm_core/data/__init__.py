"""Datasets and photos: tables and splits by lesion, safe image decoding, taxonomies, clinical data.

Everything that reads user files before the network sees them.
"""
