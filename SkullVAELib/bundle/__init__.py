"""A model folder: ModelBundle (weights, completion data, refiner, atlas, card), checks, reference import."""
