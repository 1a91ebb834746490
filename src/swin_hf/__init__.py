"""swin_hf: the Swin Transformer (Liu et al., ICCV 2021), native to the Hugging Face ecosystem.

Importing this package registers the classes with transformers' Auto classes and pipelines.
"""

import logging

from transformers import (
    AutoBackbone,
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForImageClassification,
    AutoModelForImageSegmentation,
    AutoModelForMaskedImageModeling,
    AutoModelForVideoClassification,
    Mask2FormerConfig,
    Mask2FormerForUniversalSegmentation,
)
from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_SEGMENTATION_MAPPING

from .configuration_swin import PRESETS, SwinConfig
from .configuration_video_swin import VIDEO_PRESETS, VideoSwinConfig
from .convert import ConversionError, convert_state_dict, infer_config, prepare_pretrained
from .convert_checkpoint import CheckpointError, convert_checkpoint, read_checkpoint
from .export import export_onnx, run_onnx
from .fast_paths import FastPaths
from .flops import measure_cost
from .image_processing_swin import SwinImageProcessor
from .image_processing_video_swin import VideoSwinImageProcessor
from .inference import optimize_for_inference
from .model_card import write_model_cards
from .modeling_swin import (
    SwinBackbone,
    SwinForImageClassification,
    SwinImageClassifierOutput,
    SwinModel,
    SwinModelOutput,
    SwinPreTrainedModel,
)
from .modeling_video_swin import VideoSwinForVideoClassification, VideoSwinModel, VideoSwinPreTrainedModel
from .pipeline import SwinImageClassificationPipeline, VideoSwinClassificationPipeline
from .modeling_simmim import (
    SimMIMMaskGenerator,
    SwinForMaskedImageModeling,
    SwinMaskedImageModelingOutput,
    masked_l1_loss,
)
from .resize import adapt_state_dict
from .segmentation import find_swin_backbone, load_swin_encoder, upernet_from_encoder
from .detection import detector_from_encoder

__version__ = "0.1.0"

# from_pretrained also reads transformers' own Swin checkpoints, and resizes position tables, through swin_hf
SwinPreTrainedModel.checkpoint_adapter = staticmethod(prepare_pretrained)

AutoConfig.register(SwinConfig.model_type, SwinConfig, exist_ok=True)
# Registering makes transformers 5.23 resolve its lazy processor table, which logs that ViT's default
# processor needs torchvision; that warning is about ViT, not us, so it is silenced for this one call.
logging.disable(logging.WARNING)
try:
    AutoImageProcessor.register(SwinConfig, slow_image_processor_class=SwinImageProcessor, exist_ok=True)
    AutoImageProcessor.register(VideoSwinConfig, slow_image_processor_class=VideoSwinImageProcessor, exist_ok=True)
finally:
    logging.disable(logging.NOTSET)
SwinConfig.register_for_auto_class("AutoConfig")
for _auto, _model in (
    (AutoModel, SwinModel),
    (AutoModelForImageClassification, SwinForImageClassification),
    (AutoBackbone, SwinBackbone),
    (AutoModelForMaskedImageModeling, SwinForMaskedImageModeling),
):
    _auto.register(SwinConfig, _model, exist_ok=True)
    _model.register_for_auto_class(_auto.__name__)
# Video Swin: its own config and model type, registered the same way
AutoConfig.register(VideoSwinConfig.model_type, VideoSwinConfig, exist_ok=True)
VideoSwinConfig.register_for_auto_class("AutoConfig")
for _auto, _model in ((AutoModel, VideoSwinModel), (AutoModelForVideoClassification, VideoSwinForVideoClassification)):
    _auto.register(VideoSwinConfig, _model, exist_ok=True)
    _model.register_for_auto_class(_auto.__name__)
# pipeline("image-segmentation") loads a model through AutoModelForImageSegmentation (DETR only) and then the
# class the folder names; transformers 5.22's second try passes the pipeline's `code_revision` to
# Mask2FormerForUniversalSegmentation and fails, so segment.py --task instance's folders would not load there.
# Listed here, Mask2Former loads on the first try on every supported version.
if Mask2FormerConfig not in MODEL_FOR_IMAGE_SEGMENTATION_MAPPING:
    AutoModelForImageSegmentation.register(Mask2FormerConfig, Mask2FormerForUniversalSegmentation, exist_ok=True)

__all__ = [
    "SwinImageClassificationPipeline",
    "PRESETS",
    "CheckpointError",
    "ConversionError",
    "FastPaths",
    "SimMIMMaskGenerator",
    "SwinBackbone",
    "SwinConfig",
    "SwinForImageClassification",
    "SwinForMaskedImageModeling",
    "SwinMaskedImageModelingOutput",
    "SwinImageClassifierOutput",
    "SwinImageProcessor",
    "SwinModel",
    "SwinModelOutput",
    "SwinPreTrainedModel",
    "VIDEO_PRESETS",
    "VideoSwinClassificationPipeline",
    "VideoSwinConfig",
    "VideoSwinForVideoClassification",
    "VideoSwinImageProcessor",
    "VideoSwinModel",
    "VideoSwinPreTrainedModel",
    "adapt_state_dict",
    "convert_checkpoint",
    "convert_state_dict",
    "detector_from_encoder",
    "export_onnx",
    "find_swin_backbone",
    "infer_config",
    "load_swin_encoder",
    "masked_l1_loss",
    "measure_cost",
    "optimize_for_inference",
    "read_checkpoint",
    "run_onnx",
    "upernet_from_encoder",
    "write_model_cards",
]
