"""Alignment of the diffusion prior: rewards, preference pairs, Diffusion-DPO/IPO training."""
