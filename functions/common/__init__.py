"""Code shared by every inferpipe function: configuration, errors, AWS clients, logging, data models."""
