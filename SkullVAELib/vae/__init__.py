"""The paper's method: networks, losses, the model grid, the two stages, centroids, latent completion."""
