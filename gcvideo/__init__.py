"""gcvideo: Global Context Networks for video action recognition (Slow-only ResNet-3D)."""
__version__ = "0.1.0"
