"""The inference task of the pipeline."""
