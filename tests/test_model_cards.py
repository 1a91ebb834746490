"""The committed model cards: Hub format, numbers equal to the code's, and equal to what the generator
writes now (so they cannot rot)."""

import re
from pathlib import Path

import pytest
from huggingface_hub import ModelCard

from swin_hf.configuration_swin import PRESETS, SwinConfig
from swin_hf.flops import measure_cost
from swin_hf.model_card import CARD_SPECS, card_for_spec, spec_config

CARDS = Path(__file__).resolve().parents[1] / "model_cards"

# ImageNet-1k top-1 reported by the paper (Liu et al., ICCV 2021, Table 1), by card; for Swin V2 by the
# official repository's V2 model zoo (README of microsoft/Swin-Transformer), which lists every release
PAPER_TOP1 = {
    "swin-tiny-patch4-window7-224": 81.3,
    "swin-small-patch4-window7-224": 83.0,
    "swin-base-patch4-window7-224": 83.5,
    "swin-base-patch4-window12-384": 84.5,
    "swin-base-patch4-window7-224-in22k-ft-in1k": 85.2,
    "swin-base-patch4-window12-384-in22k-ft-in1k": 86.4,
    "swin-large-patch4-window7-224-in22k-ft-in1k": 86.3,
    "swin-large-patch4-window12-384-in22k-ft-in1k": 87.3,
    "swinv2-tiny-patch4-window8-256": 81.8,
    "swinv2-tiny-patch4-window16-256": 82.8,
    "swinv2-small-patch4-window8-256": 83.7,
    "swinv2-small-patch4-window16-256": 84.1,
    "swinv2-base-patch4-window8-256": 84.2,
    "swinv2-base-patch4-window16-256": 84.6,
    "swinv2-base-patch4-window12to16-192to256-22kto1k-ft": 86.2,
    "swinv2-base-patch4-window12to24-192to384-22kto1k-ft": 87.1,
    "swinv2-large-patch4-window12to16-192to256-22kto1k-ft": 86.9,
    "swinv2-large-patch4-window12to24-192to384-22kto1k-ft": 87.6,
}
REPORTED_BY = {1: "the paper", 2: "the official Swin V2 model zoo"}


def test_there_is_a_card_per_release_and_no_stray_card():
    assert sorted(p.stem for p in CARDS.glob("*.md")) == sorted(s.name for s in CARD_SPECS)
    presets = {s.preset for s in CARD_SPECS}
    assert presets == set(PRESETS)  # V1: T/S/B/L at 224 and 384; V2: every release
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

    version = PRESETS[spec.preset].version
    if spec.name in PAPER_TOP1:
        (result,) = data.eval_results
        assert result.metric_type == "accuracy" and result.metric_value == PAPER_TOP1[spec.name]
        assert result.dataset_type == "imagenet-1k" and REPORTED_BY[version] in result.metric_name
        assert f"**{PAPER_TOP1[spec.name]}%**" in card.text and f"as reported by {REPORTED_BY[version]}" in card.text
    else:
        assert data.eval_results is None and "21,841 classes" in card.text

    assert f"swin-hf convert --from official {spec.official_file} ./{spec.name}" in card.text
    citation = "@inproceedings{liu2022swinv2" if version == 2 else "@inproceedings{liu2021swin,"
    for section in ("## Usage", "## Limitations", "## License", "## Citation", citation):
        assert section in card.text
    if version == 2:  # each stage's window, and the pre-training windows of the fine-tuned releases
        config = spec_config(spec)
        assert f"| Patch size / window size | 4 / {config.window_size} |" in card.text
        if "12to" in spec.name:
            assert "| Pre-training windows (position bias normalised by) | 12 / 12 / 12 / 6 |" in card.text
            assert "pre-trained on ImageNet-22k with window 12" in card.text
        assert "Swin Transformer V2: Scaling Up Capacity and Resolution" in card.text
    assert 'pipeline("image-classification"' in card.text and "AutoModelForImageClassification" in card.text
    assert "MIT license" in card.text and "Apache-2.0" in card.text


def test_v2_releases_are_found_by_file_name_and_architecture():
    from swin_hf.model_card import find_spec, stage_windows, timm_architecture

    by_name = {s.name: s for s in CARD_SPECS}
    w8, w16 = by_name["swinv2-tiny-patch4-window8-256"], by_name["swinv2-tiny-patch4-window16-256"]
    assert find_spec(spec_config(w8), "/downloads/swinv2_tiny_patch4_window8_256.pth") == w8
    assert find_spec(spec_config(w16), "/downloads/swinv2_tiny_patch4_window8_256.pth") == w16  # the shapes decide
    ft = by_name["swinv2-base-patch4-window12to16-192to256-22kto1k-ft"]
    assert find_spec(spec_config(ft)) == ft
    # the same architecture without the pre-training windows is another model (window 16 from scratch)
    scratch = SwinConfig.from_preset(ft.preset, pretrained_window_sizes=[0, 0, 0, 0], num_labels=1000)
    assert find_spec(scratch) == by_name["swinv2-base-patch4-window16-256"]
    assert stage_windows(spec_config(ft)) == [16, 16, 16, 8] and stage_windows(spec_config(ft), pretrained=True) == [12, 12, 12, 6]
    assert stage_windows(spec_config(w8), pretrained=True) == [8, 8, 8, 8]
    assert timm_architecture(ft.preset) == "swinv2_base_window12to16_192to256"
    assert timm_architecture("swinv2-large-patch4-window12-192-22k") == "swinv2_large_window12_192"
    assert timm_architecture("swin-tiny-patch4-window7-224") == "swin_tiny_patch4_window7_224"


HOSTILE = ["</script><script>alert(1)</script>", "<img src=x onerror=alert(1)>", "a | b", "two\nlines", "`tick`", "[link](http://x)"]


def _rendered_html(markdown_text: str) -> str:
    """The HTML a CommonMark + GFM-tables renderer (as the Hub's) makes of a card body."""
    from markdown_it import MarkdownIt  # a declared test dependency (pyproject.toml)

    return MarkdownIt("commonmark").enable("table").render(markdown_text)


def test_training_cards_escape_user_text():
    """Class names, the dataset, the model name and hyperparameter values used to go into README.md raw:
    HTML ran on the Hub page, | and newlines broke the tables, a newline in a name could add YAML keys."""
    import yaml

    from swin_hf.training.report import model_card

    card = model_card("evil\nname: x", "org/base", "data\n- injected", HOSTILE, {"train_dir": HOSTILE[0], "note": "a | b\nc"},
                      {"val_top1": 0.5, "weird": "x | <b>"}, notes=HOSTILE)
    front, body = card.split("---\n")[1], card.split("---\n", 2)[2]
    meta = yaml.safe_load(front)
    assert meta["model-index"][0]["name"] == "evil\nname: x" and "datasets" not in meta and "name" not in meta
    for line in body.splitlines():
        if line.startswith("|"):  # every table row keeps its two cells
            assert len(re.split(r"(?<!\\)\|", line)) == 4, line
    html = _rendered_html(body)
    assert "<script" not in html and "<img src=x" not in html and "<a href" not in html  # (its own figures are <img src=...png)
    assert "&lt;/script&gt;&lt;script&gt;alert(1)&lt;/script&gt;" in html and "&lt;img src=x onerror=alert(1)&gt;" in html
    assert "0: &lt;/script&gt;" in html and "2: a | b, 3: two lines" in html  # labels shown as written, on one line
    usage = body.split("```python\n", 1)[1].split("```", 1)[0]
    assert 'model="evil\\nname: x")' in usage  # a Python string literal, the newline escaped


@pytest.mark.parametrize("text", HOSTILE)
def test_escape_markdown_shows_text_literally(text):
    from swin_hf.model_card import escape_markdown

    for code in (False, True):
        html = _rendered_html(f"| a | b |\n|---|---|\n| x | {escape_markdown(text, code=code)} |\n")
        assert "<script" not in html and "<img" not in html and "<a " not in html and html.count("<td>") == 2
        cell = html.split("<td>")[2].split("</td>")[0]
        assert cell.replace("<code>", "").replace("</code>", "") in (" ".join(text.split()).replace("&", "&amp;")
                                                                         .replace("<", "&lt;").replace(">", "&gt;"),)


def test_converted_card_escapes_the_title_and_the_output_folder():
    """`swin-hf convert` names the card after the output folder: a hostile name stays text in code."""
    from swin_hf.model_card import render_card

    card = render_card(SwinConfig(image_size=32, embed_dim=8, depths=[1], num_heads=[1], window_size=4, num_labels=2),
                       title="<b>t</b>", folder="./x`\n```\n<script>alert(1)</script>", source_note="n")
    html = _rendered_html(card.split("---\n", 2)[2])
    assert "<script" not in html and "<b>" not in html and "# &lt;b&gt;t&lt;/b&gt;" in card
    assert html.count("<pre>") == card.count("```") // 2  # no block was closed early or opened by the folder name
