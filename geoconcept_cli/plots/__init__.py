"""Plots: world maps, reliability diagrams and the modality-gap UMAP (PNG, offline)."""
