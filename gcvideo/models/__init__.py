"""Models: Slow-only ResNet-3D with the global-context family, weight inflation and checkpoint loading."""
from gcvideo.layers import ContextBlock, NonLocalBlock, create_context_block
from gcvideo.models.build import build_model
from gcvideo.models.inflate import InflationError, inflate_state_dict
from gcvideo.models.pretrained import LoadReport, add_context_blocks, build_model_from_checkpoint, load_pretrained
from gcvideo.models.resnet import ContextPlacement, ResNetSpec, SlowResNet
from gcvideo.utils.io import CheckpointMismatchError

__all__ = ["build_model", "ContextBlock", "NonLocalBlock", "create_context_block", "inflate_state_dict",
           "SlowResNet", "ResNetSpec", "ContextPlacement", "load_pretrained", "LoadReport", "InflationError", "CheckpointMismatchError",
           "build_model_from_checkpoint", "add_context_blocks"]
