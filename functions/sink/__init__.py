"""The sink task of the pipeline."""
