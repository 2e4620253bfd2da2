"""Example applications (a package, so ``dserve run examples.embeddings.app:app`` works from the repo root)."""
