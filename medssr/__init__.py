"""medssr: the MedSSR method (arXiv 2604.11547) as a Kubernetes-native MLOps system."""

__version__ = "0.1.0"
