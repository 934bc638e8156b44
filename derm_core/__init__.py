"""DermTriage core library: data, models, training, evaluation, explanation, triage, storage.

Plain Python (no Streamlit); the app's pages and the CLI (``python -m derm_core``) call it.
"""
__version__ = "0.1.0"
