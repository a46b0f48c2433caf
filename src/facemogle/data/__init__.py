"""Datasets, split files and caches for training and evaluation."""
