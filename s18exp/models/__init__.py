"""The models of s18exp; each is assembled from the blocks in `s18exp.blocks`."""
