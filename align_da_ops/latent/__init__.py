"""The latent space of the latent diffusion DA method: a spherical autoencoder and its checkpoints."""
