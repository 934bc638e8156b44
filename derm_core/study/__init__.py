"""Reader studies: drawing cases, the SQLite store, and the results against the model's ROC.

Clinicians read with and without the AI.
"""
