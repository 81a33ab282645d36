"""Deployment: a trained model exported as one self-describing folder, and the runtime that serves it."""
