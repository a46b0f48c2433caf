"""Evaluation: metrics, the paper protocol and the face parser (photo -> mask)."""
