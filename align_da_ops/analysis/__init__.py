"""Analysis methods: background-only, 3D-Var, latent diffusion (Align-DA)."""
