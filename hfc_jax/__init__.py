"""hfc_jax: frequency-split analysis of CNN generalisation (Wang et al., CVPR 2020) in JAX/Flax."""

__version__ = "0.1.0"
