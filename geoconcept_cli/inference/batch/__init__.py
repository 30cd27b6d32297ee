"""Batch runs over an ``embed-images`` feature folder: predictions and explanations into
folders of Parquet parts, split over ranks, resumable."""
