"""Implant sources (rim fit, learned, atlas, model), their post-processing and checks."""
