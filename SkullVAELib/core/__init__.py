"""Foundation: errors, atomic writes, progress, resource limits, the vocabulary and configs, devices."""
