"""One module per task: what differs between the UNet and the VAE lives there and nowhere else."""
