"""The PreTrainedModel contract: save/load, Auto classes, pipeline, remote code, transformers checkpoints."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import transformers
from PIL import Image
from safetensors.torch import load_file
from transformers import (
    AutoBackbone,
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForImageClassification,
    pipeline,
)

import swin_hf
from swin_hf import SwinBackbone, SwinConfig, SwinForImageClassification, SwinImageProcessor, SwinModel
from swin_reference import TINY, TWO_STAGES, images, randomize, reference_pair

LABELS = {0: "cat", 1: "dog", 2: "eel"}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A saved classifier + image processor folder, and the model it came from."""
    folder = tmp_path_factory.mktemp("saved")
    config = SwinConfig(**TWO_STAGES, num_labels=3, id2label=LABELS, label2id={v: k for k, v in LABELS.items()})
    model = randomize(SwinForImageClassification(config), seed=3).eval()
    model.save_pretrained(folder)
    SwinImageProcessor.for_image_size(32).save_pretrained(folder)
    return folder, model


def test_save_load_round_trip_with_safetensors(saved):
    folder, model = saved
    assert (folder / "model.safetensors").exists() and not (folder / "pytorch_model.bin").exists()
    stored = load_file(folder / "model.safetensors")
    assert stored.keys() == model.state_dict().keys()  # no derived buffers in the checkpoint
    loaded = SwinForImageClassification.from_pretrained(folder).eval()
    x = images(2, 32, 48)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).logits, model(x).logits, atol=0, rtol=0)
    assert loaded.config.id2label == LABELS


def test_return_dict_false_gives_the_same_values_as_a_tuple(saved):
    _, model = saved
    x, labels = images(2, 32, 32), torch.tensor([0, 1])
    with torch.no_grad():
        out = model(x, labels=labels, output_hidden_states=True, output_attentions=True)
        tup = model(x, labels=labels, output_hidden_states=True, output_attentions=True, return_dict=False)
    assert isinstance(tup, tuple) and len(tup) == 5
    torch.testing.assert_close(tup[0], out.loss)
    torch.testing.assert_close(tup[1], out.logits)
    assert len(tup[2]) == len(out.hidden_states) == 3  # embeddings + 2 stages
    assert len(tup[3]) == len(out.attentions) == 2 and len(tup[4]) == 3
    base = SwinModel(SwinConfig(**TWO_STAGES)).eval()
    with torch.no_grad():
        last, pooled = base(x, return_dict=False)
    assert last.shape == (2, 16, 32) and pooled.shape == (2, 32)  # 32px / patch 4 / one merge = 4x4 tokens


def test_auto_classes_resolve_to_swin_hf(saved):
    folder, _ = saved
    assert type(AutoConfig.from_pretrained(folder)) is SwinConfig
    assert type(AutoModel.from_pretrained(folder)) is SwinModel
    assert type(AutoModelForImageClassification.from_pretrained(folder)) is SwinForImageClassification
    # transformers 5.23's AutoBackbone.from_pretrained asks the Hub about every name (even a local folder),
    # so offline the registration is shown through from_config, and weights load with SwinBackbone itself
    config = AutoConfig.from_pretrained(folder, out_features=["stage1", "stage2"])
    backbone = AutoBackbone.from_config(config)
    assert type(backbone) is SwinBackbone and backbone.out_features == ["stage1", "stage2"]
    assert SwinBackbone.from_pretrained(folder, out_features=["stage2"]).channels == [32]
    assert type(AutoImageProcessor.from_pretrained(folder)) is SwinImageProcessor
    assert type(AutoModelForImageClassification.from_config(SwinConfig(**TINY))) is SwinForImageClassification


def _pil_images():
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 255, (40, 52, 3), dtype=np.uint8))
    return {
        "RGB": rgb,
        "L": rgb.convert("L"),
        "RGBA": rgb.convert("RGBA"),
        "P": rgb.convert("P"),
    }


def test_pipeline_classifies_pil_images_of_every_mode(saved):
    folder, model = saved
    classifier = pipeline("image-classification", model=str(folder))
    processor = SwinImageProcessor.from_pretrained(folder)
    for mode, image in _pil_images().items():
        result = classifier(image, top_k=3)
        assert {r["label"] for r in result} == set(LABELS.values()), mode
        with torch.no_grad():
            probs = model(**processor(image, return_tensors="pt")).logits.softmax(-1)[0]
        assert result[0]["label"] == LABELS[int(probs.argmax())], mode
        assert result[0]["score"] == pytest.approx(float(probs.max()), abs=1e-5), mode


def test_image_processor_does_the_official_evaluation_transform():
    p224 = SwinImageProcessor.for_image_size(224)
    assert p224.size == {"shortest_edge": 256} and p224.crop_size == {"height": 224, "width": 224}
    assert p224.resample == 3 and list(p224.image_mean) == [0.485, 0.456, 0.406]  # bicubic, ImageNet statistics
    p384 = SwinImageProcessor.for_image_size(384)
    assert p384.size == {"height": 384, "width": 384} and not p384.do_center_crop
    out = p224(Image.new("L", (500, 300), color=255), return_tensors="pt")["pixel_values"]
    assert out.shape == (1, 3, 224, 224)
    torch.testing.assert_close(out[0, :, 0, 0], (1 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225]))
    with pytest.raises(ValueError, match="crop_pct"):
        SwinImageProcessor.for_image_size(224, crop_pct=1.5)


def test_saved_folder_carries_auto_map_and_code(saved):
    folder, _ = saved
    auto_map = json.loads((folder / "config.json").read_text())["auto_map"]
    assert set(auto_map) == {"AutoConfig", "AutoModel", "AutoModelForImageClassification", "AutoBackbone", "AutoImageProcessor"}
    for reference in auto_map.values():
        assert (folder / (reference.split(".")[0] + ".py")).exists(), reference


def test_trust_remote_code_works_where_swin_hf_cannot_be_imported(saved):
    folder, model = saved
    x = images(1, 32, 32)
    with torch.no_grad():
        expected = model(x).logits
    torch.save(x, folder.parent / "x.pt")
    script = textwrap.dedent(
        f"""
        import os, sys
        sys.path = [p for p in sys.path if not os.path.isdir(os.path.join(p or ".", "swin_hf"))]
        try:
            import swin_hf
            raise SystemExit("swin_hf is still importable")
        except ImportError:
            pass
        import torch
        from PIL import Image
        from transformers import AutoBackbone, AutoConfig, AutoModelForImageClassification, pipeline
        folder = {str(folder)!r}
        model = AutoModelForImageClassification.from_pretrained(folder, trust_remote_code=True).eval()
        assert "swin_hf" not in type(model).__module__, type(model).__module__
        with torch.no_grad():
            print("LOGITS", model(torch.load({str(folder.parent / "x.pt")!r})).logits.tolist())
        config = AutoConfig.from_pretrained(folder, trust_remote_code=True, out_features=["stage2"])
        backbone = AutoBackbone.from_config(config, trust_remote_code=True)
        print("BACKBONE", type(backbone).__name__)
        classifier = pipeline("image-classification", model=folder, trust_remote_code=True)
        print("PIPELINE", classifier(Image.new("RGB", (40, 30)), top_k=1)[0]["label"])
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = {line.split(" ", 1)[0]: line.split(" ", 1)[1] for line in done.stdout.splitlines() if " " in line}
    torch.testing.assert_close(torch.tensor(json.loads(lines["LOGITS"])), expected, atol=1e-6, rtol=1e-5)
    assert lines["BACKBONE"] == "SwinBackbone" and lines["PIPELINE"] in LABELS.values()
    assert "custom code" not in done.stderr  # no interactive remote-code prompt


# ---------------------------------------------------------------------------------------------
# Checkpoints written by transformers' own Swin (model_type "swin")
# ---------------------------------------------------------------------------------------------

LEGACY_NAMES = [
    ("attention.q_proj.", "attention.self.query."),
    ("attention.k_proj.", "attention.self.key."),
    ("attention.v_proj.", "attention.self.value."),
    ("attention.o_proj.", "attention.output.dense."),
    ("attention.relative_position_bias.relative_position_bias_table", "attention.self.relative_position_bias_table"),
    ("mlp.fc1.", "intermediate.dense."),
    ("mlp.fc2.", "output.dense."),
]


def _legacy_state_dict(model):
    """transformers' state dict in the names of older Hub checkpoints, with the persistent index buffer."""
    state = {}
    for key, value in model.state_dict().items():
        for new, old in LEGACY_NAMES:
            key = key.replace(new, old)
        state[key] = value
        if key.endswith("attention.self.relative_position_bias_table"):
            window = int((value.shape[0] ** 0.5 + 1) // 2)
            state[key.replace("_bias_table", "_index")] = torch.zeros(window**4, dtype=torch.long)
    return state


@pytest.mark.parametrize("legacy", [False, True], ids=["current-names", "legacy-names"])
@pytest.mark.parametrize("head", ["classification", "model", "backbone"])
def test_transformers_checkpoints_load_with_identical_outputs(tmp_path, head, legacy):
    config = dict(TINY, num_labels=4, out_features=["stage1", "stage3"])
    theirs, _ = reference_pair(config, head=head)
    theirs.save_pretrained(tmp_path)
    if legacy:
        os.remove(tmp_path / "model.safetensors")
        torch.save(_legacy_state_dict(theirs), tmp_path / "pytorch_model.bin")
    ours_cls = {"classification": SwinForImageClassification, "model": SwinModel, "backbone": SwinBackbone}[head]
    ours = ours_cls.from_pretrained(tmp_path).eval()
    assert ours.config.model_type == "swin_hf" and ours.config.depths == TINY["depths"]
    x = images(2, 64, 72)
    with torch.no_grad():
        a, b = theirs(x), ours(x)
    if head == "classification":
        torch.testing.assert_close(b.logits, a.logits, atol=1e-5, rtol=1e-4)
    elif head == "model":
        torch.testing.assert_close(b.pooler_output, a.pooler_output, atol=1e-5, rtol=1e-4)
    else:
        for r, g in zip(a.feature_maps, b.feature_maps, strict=True):
            torch.testing.assert_close(g, r, atol=1e-5, rtol=1e-4)


def test_a_transformers_checkpoint_saved_again_is_a_swin_hf_checkpoint(tmp_path):
    theirs, _ = reference_pair(dict(TINY, num_labels=2))
    theirs.save_pretrained(tmp_path / "theirs")
    SwinForImageClassification.from_pretrained(tmp_path / "theirs").save_pretrained(tmp_path / "ours")
    assert json.loads((tmp_path / "ours" / "config.json").read_text())["model_type"] == "swin_hf"
    ours = AutoModelForImageClassification.from_pretrained(tmp_path / "ours").eval()
    x = images(1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x).logits, theirs(x).logits, atol=1e-5, rtol=1e-4)


def test_a_checkpoint_of_another_architecture_is_refused_with_the_keys(tmp_path):
    bert = transformers.BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    state = transformers.BertModel(bert).state_dict()
    with pytest.raises(swin_hf.ConversionError, match=r"are not Swin weights: embeddings\.LayerNorm\.bias"):
        swin_hf.convert_state_dict(state, source="transformers")


def test_reheading_for_new_labels(saved, caplog):
    folder, model = saved
    with caplog.at_level("WARNING", logger="swin_hf"):
        reheaded = SwinForImageClassification.from_pretrained(folder, num_labels=7, ignore_mismatched_sizes=True)
    assert "classifier has 3 labels but the config asks for 7" in caplog.text
    assert reheaded.classifier.weight.shape == (7, 32) and reheaded.config.num_labels == 7
    for key, value in model.swin.state_dict().items():
        assert torch.equal(reheaded.swin.state_dict()[key], value), key
    # as in transformers, a new head must be asked for: silently dropping trained weights is an error
    with pytest.raises(Exception, match="ignore_mismatched_sizes"):
        SwinForImageClassification.from_pretrained(folder, num_labels=5)


def test_dtype_and_device_map_loading(saved):
    folder, model = saved
    loaded = SwinForImageClassification.from_pretrained(folder, dtype=torch.bfloat16, device_map="cpu").eval()
    assert loaded.dtype == torch.bfloat16 and loaded.device.type == "cpu"
    x = images(2, 32, 32)
    with torch.no_grad():
        logits = loaded(x).logits
    assert logits.dtype == torch.bfloat16
    torch.testing.assert_close(logits.float(), model(x).logits, atol=0.1, rtol=0.05)


@pytest.mark.parametrize(
    "problem, labels, expected, inferred_as",
    [
        ("single_label_classification", torch.tensor([0, 2]), lambda z, y: torch.nn.functional.cross_entropy(z, y), "same"),
        ("multi_label_classification", torch.tensor([[1.0, 0, 1], [0, 1, 0]]), lambda z, y: torch.nn.functional.binary_cross_entropy_with_logits(z, y), "same"),
        # float targets for 3 outputs are inferred as multi-label: regression must be asked for
        ("regression", torch.tensor([[0.5, -1.0, 2.0], [0.0, 1.0, 0.0]]), lambda z, y: torch.nn.functional.mse_loss(z, y), "multi_label"),
    ],
)
def test_losses_per_problem_type(problem, labels, expected, inferred_as):
    model = randomize(SwinForImageClassification(SwinConfig(**TWO_STAGES, num_labels=3))).eval()
    x = images(2, 32, 32)
    with torch.no_grad():
        inferred = model(x, labels=labels)  # problem_type unset: inferred from the label dtype
        model.config.problem_type = problem
        explicit = model(x, labels=labels)
    torch.testing.assert_close(explicit.loss, expected(explicit.logits, labels))
    if inferred_as == "same":
        torch.testing.assert_close(inferred.loss, explicit.loss)
    else:
        bce = torch.nn.functional.binary_cross_entropy_with_logits(inferred.logits, labels)
        torch.testing.assert_close(inferred.loss, bce)


def test_inferring_the_problem_type_leaves_the_config_alone():
    model = SwinForImageClassification(SwinConfig(**TWO_STAGES, num_labels=1))
    loss = model(images(2, 32, 32), labels=torch.tensor([0.3, -0.2])).loss
    assert loss.ndim == 0 and model.config.problem_type is None
