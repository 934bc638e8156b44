"""Training: the one TrainConfig, the training loop and its batches, run folders and background jobs.

What `python -m derm_core train` and the Model lab's Train section run.
"""
