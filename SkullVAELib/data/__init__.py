"""Data sets: phantoms, the cranial and facial defect recipes, case layout, training augmentation."""
