"""swin_hf: the Swin Transformer (Liu et al., ICCV 2021), native to the Hugging Face ecosystem.

Importing this package registers the classes with transformers' Auto classes and pipelines.
"""

from transformers import (
    AutoBackbone,
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForImageClassification,
)

from .configuration_swin import PRESETS, SwinConfig
from .convert import ConversionError, convert_state_dict
from .export import export_onnx
from .image_processing_swin import SwinImageProcessor
from .modeling_swin import (
    SwinBackbone,
    SwinForImageClassification,
    SwinImageClassifierOutput,
    SwinModel,
    SwinModelOutput,
    SwinPreTrainedModel,
)

__version__ = "0.1.0"

AutoConfig.register(SwinConfig.model_type, SwinConfig, exist_ok=True)
AutoImageProcessor.register(SwinConfig, slow_image_processor_class=SwinImageProcessor, exist_ok=True)
SwinImageProcessor.register_for_auto_class("AutoImageProcessor")
SwinConfig.register_for_auto_class("AutoConfig")
for _auto, _model in (
    (AutoModel, SwinModel),
    (AutoModelForImageClassification, SwinForImageClassification),
    (AutoBackbone, SwinBackbone),
):
    _auto.register(SwinConfig, _model, exist_ok=True)
    _model.register_for_auto_class(_auto.__name__)

__all__ = [
    "PRESETS",
    "ConversionError",
    "SwinBackbone",
    "SwinConfig",
    "SwinForImageClassification",
    "SwinImageClassifierOutput",
    "SwinImageProcessor",
    "SwinModel",
    "SwinModelOutput",
    "SwinPreTrainedModel",
    "convert_state_dict",
    "export_onnx",
]
