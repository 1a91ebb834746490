"""Every public class's docstring example runs and prints what it says."""

import doctest

import pytest

import swin_hf.configuration_swin
import swin_hf.configuration_video_swin
import swin_hf.image_processing_swin
import swin_hf.image_processing_video_swin
import swin_hf.modeling_swin
import swin_hf.modeling_video_swin


@pytest.mark.parametrize(
    "module",
    [
        swin_hf.configuration_swin, swin_hf.modeling_swin, swin_hf.image_processing_swin, swin_hf.configuration_video_swin,
        swin_hf.modeling_video_swin, swin_hf.image_processing_video_swin,
    ],
    ids=lambda m: m.__name__,
)  # fmt: skip
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
