"""edgetl: fine-tune mobile backbones on the host, export verified bundles, adapt on the device."""

from edgetl.backbones import Backbone, available_backbones, create_backbone

__version__ = "0.1.0"
__all__ = ["Backbone", "__version__", "available_backbones", "create_backbone"]
