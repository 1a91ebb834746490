"""The committed model cards: Hub format, numbers equal to the code's, and equal to what the generator
writes now (so they cannot rot)."""

import re
from pathlib import Path

import pytest
from huggingface_hub import ModelCard

from swin_hf.configuration_swin import PRESETS
from swin_hf.flops import measure_cost
from swin_hf.model_card import CARD_SPECS, card_for_spec, spec_config

CARDS = Path(__file__).resolve().parents[1] / "model_cards"

# ImageNet-1k top-1 reported by the paper (Liu et al., ICCV 2021, Table 1), by card
PAPER_TOP1 = {
    "swin-tiny-patch4-window7-224": 81.3,
    "swin-small-patch4-window7-224": 83.0,
    "swin-base-patch4-window7-224": 83.5,
    "swin-base-patch4-window12-384": 84.5,
    "swin-base-patch4-window7-224-in22k-ft-in1k": 85.2,
    "swin-base-patch4-window12-384-in22k-ft-in1k": 86.4,
    "swin-large-patch4-window7-224-in22k-ft-in1k": 86.3,
    "swin-large-patch4-window12-384-in22k-ft-in1k": 87.3,
}


def test_there_is_a_card_per_release_and_no_stray_card():
    assert sorted(p.stem for p in CARDS.glob("*.md")) == sorted(s.name for s in CARD_SPECS)
    presets = {s.preset for s in CARD_SPECS}
    assert presets == {name for name, p in PRESETS.items() if p.version == 1}  # T/S/B/L, 224 and 384
    assert {s.num_labels for s in CARD_SPECS} == {1000, 21841}  # ImageNet-1k and -22k heads
    assert {s.name for s in CARD_SPECS if s.paper_top1 is not None} == set(PAPER_TOP1)


@pytest.mark.parametrize("spec", CARD_SPECS, ids=lambda s: s.name)
def test_card(spec):
    path = CARDS / f"{spec.name}.md"
    text = path.read_text(encoding="utf-8")
    assert text == card_for_spec(spec), f"{path} is stale: regenerate with `swin-hf cards model_cards`"

    card = ModelCard.load(path)
    data = card.data
    assert data.license == "mit" and data.library_name == "swin_hf"
    assert data.pipeline_tag == "image-classification"
    assert {"image-classification", "swin-transformer"} <= set(data.tags)
    assert data.metrics == ["accuracy"]
    assert ("imagenet-21k" in data.datasets) == (spec.pretraining == "ImageNet-22k")

    cost = measure_cost(spec_config(spec))
    params = int(re.search(r"\| Parameters \| ([\d,]+) ", card.text).group(1).replace(",", ""))
    flops = float(re.search(r"\| FLOPs \| ([\d.]+)G ", card.text).group(1))
    assert params == cost.params
    assert flops == round(cost.flops / 1e9, 3)
    assert f"| Classes | {spec.num_labels} |" in card.text
    size = PRESETS[spec.preset][4]
    assert f"| Input resolution | {size}x{size} |" in card.text

    if spec.name in PAPER_TOP1:
        (result,) = data.eval_results
        assert result.metric_type == "accuracy" and result.metric_value == PAPER_TOP1[spec.name]
        assert result.dataset_type == "imagenet-1k" and "paper" in result.metric_name
        assert f"**{PAPER_TOP1[spec.name]}%**" in card.text and "as reported by the paper" in card.text
    else:
        assert data.eval_results is None and "21,841 classes" in card.text

    assert f"swin-hf convert --from official {spec.official_file} ./{spec.name}" in card.text
    for section in ("## Usage", "## Limitations", "## License", "## Citation", "@inproceedings{liu2021swin"):
        assert section in card.text
    assert 'pipeline("image-classification"' in card.text and "AutoModelForImageClassification" in card.text
    assert "MIT license" in card.text and "Apache-2.0" in card.text
