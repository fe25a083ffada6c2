"""SkullVAELib: β-VAE skull reconstruction and shape completion (pure Python, no Slicer/Qt).

Implements "Training β-VAE by Aggregating a Learned Gaussian Posterior with a Decoupled
Decoder": stage 1 β-VAE, stage 2 decoupled decoder, latent-arithmetic skull completion.
"""

__version__ = "0.1.0"
