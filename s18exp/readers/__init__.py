"""Independent readers of the VAE's outputs: a panel of classifiers that share no architecture, weights or
training code with the judge or with the guide that the VAE trains against (networks.py: what they are;
augment.py and training.py: how each learns; panel.py: training once, caching, and checking their settings)."""
