"""gcvideo: Global Context Networks for video action recognition (Slow-only ResNet-3D)."""
import warnings as _warnings

with _warnings.catch_warnings():  # fvcore.nn (imported by pytorchvideo too) scripts a loss at import;
    _warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=FutureWarning)  # torch warns
    import fvcore.nn  # noqa: F401

__version__ = "0.1.0"
