"""The GPS gallery predictions are retrieved from: its cached embeddings and, for galleries of
millions of points, its faiss index."""
