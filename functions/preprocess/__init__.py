"""The preprocess task of the pipeline."""
