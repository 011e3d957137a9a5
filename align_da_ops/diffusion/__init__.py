"""Score-based prior on the latent space: schedule, denoiser network, samplers, observation guidance."""
