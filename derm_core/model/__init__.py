"""The model: its typed card and files, the network, and the Predictor that runs it.

Calibration, decision rules, the out-of-scope detector and conformal sets read the network's outputs.
"""
