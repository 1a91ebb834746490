"""optimize_for_inference (the fastest inference form, one call), its use by pipelines, and `swin-hf predict`."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

import swin_hf.inference as inference
from swin_hf.fast_paths import CpuFeatures
from swin_hf import SwinConfig, SwinForImageClassification, SwinImageProcessor, optimize_for_inference
from swin_hf.cli import main as cli
from swin_reference import TINY, images, randomize


def _model(**overrides):
    config = SwinConfig(**{**TINY, "num_labels": 4, "id2label": {i: f"c{i}" for i in range(4)}, **overrides})
    return randomize(SwinForImageClassification(config), std=0.1).eval()


def test_bf16_is_chosen_where_the_cpu_multiplies_bf16(monkeypatch):
    for amx, avx512_bf16, expected in ((True, False, True), (False, True, True), (False, False, False)):
        cpu = CpuFeatures(x86_onednn=True, onednn_bf16=True, avx512_bf16=avx512_bf16, amx_bf16=amx, isa="AVX512")
        monkeypatch.setattr(CpuFeatures, "of_this_machine", lambda cpu=cpu: cpu)
        assert inference.native_bf16(torch.device("cpu")) is expected


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_same_inputs_same_outputs_in_fp32(dtype):
    model = _model()
    x = images(3, 64, 64)
    with torch.no_grad():
        expected = model(x, output_hidden_states=True)
    fast = optimize_for_inference(model, dtype=dtype, compile=False)
    out = fast(x, output_hidden_states=True)
    assert out.logits.dtype == torch.float32 and all(h.dtype == torch.float32 for h in out.hidden_states)
    tol = dict(atol=1e-6, rtol=1e-6) if dtype == "fp32" else dict(atol=0.05, rtol=0.05)
    torch.testing.assert_close(out.logits, expected.logits, **tol)
    assert fast.optimized_for_inference["dtype"] == ("float32" if dtype == "fp32" else "bfloat16")
    assert not any(p.requires_grad for p in fast.parameters())


def test_an_optimized_model_refuses_training_and_a_second_optimization():
    fast = optimize_for_inference(_model(), compile=False)
    fast.eval()  # (eval mode is fine)
    with pytest.raises(RuntimeError, match="optimized for inference"):
        fast.train()
    with pytest.raises(ValueError, match="already optimized"):
        optimize_for_inference(fast)
    with pytest.raises(ValueError, match="quantize"):
        optimize_for_inference(_model(), quantize="int4")
    with pytest.raises(ValueError, match="dtype"):
        optimize_for_inference(_model(), dtype="fp16")


@pytest.mark.slow
def test_compiled_once_for_every_batch_size():
    """The batch dimension is dynamic from the first call: batches of 2, 5 and 3 share one graph, and a batch
    of 1 (which torch.compile always specialises) adds one more (backend "eager": the capture is what is
    tested; Inductor's code generation takes minutes on a small CPU)."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    model = _model()
    fast = optimize_for_inference(model, dtype="fp32", backend="eager")
    counters.clear()
    graphs = []
    for batch in (2, 5, 3, 1, 4):
        x = images(batch, 64, 64, seed=batch)
        with torch.no_grad():
            torch.testing.assert_close(fast(x).logits, model.__class__.forward(model, x).logits, atol=1e-5, rtol=1e-5)
        graphs.append(counters["stats"]["unique_graphs"])
    assert graphs == [1, 1, 1, 2, 2]
    torch._dynamo.reset()


@pytest.mark.slow
def test_inductor_freezes_the_weights_into_the_compiled_graph():
    """With Inductor the optimized form is a frozen snapshot: its weights are constants of the compiled code
    (what lets Inductor prepack the products and fuse their bias and activation), so an in-place edit of a
    weight afterwards changes nothing. Had the weights stayed inputs of the graph (what
    torch.compile(options={"freezing": True}) alone gives, or a call with autograd on), the edit would show."""
    torch._dynamo.reset()
    config = SwinConfig(**{**TINY, "depths": [1, 1], "num_heads": [1, 2], "num_labels": 3})
    model = randomize(SwinForImageClassification(config), std=0.1).eval()
    x = images(2, 64, 64)
    with torch.no_grad():
        expected = model(x).logits
    fast = optimize_for_inference(model, dtype="fp32")
    torch.testing.assert_close(fast(x).logits, expected, atol=1e-4, rtol=1e-4)
    with torch.no_grad():
        model.classifier.weight.mul_(-2.0)
        model.swin.stages[0].blocks[0].mlp.fc1.weight.zero_()
    torch.testing.assert_close(fast(x).logits, expected, atol=1e-4, rtol=1e-4)
    torch._dynamo.reset()


def test_a_deep_copy_is_an_independent_optimized_model():
    import copy

    fast = optimize_for_inference(_model(), dtype="fp32", compile=False)
    twin = copy.deepcopy(fast)
    assert twin.forward is not fast.forward and twin.optimized_for_inference == fast.optimized_for_inference
    x = images(2, 64, 64)
    expected = fast(x).logits
    torch.testing.assert_close(twin(x).logits, expected)
    with torch.no_grad():
        twin.classifier.weight.zero_()
        twin.classifier.bias.fill_(1.0)
    torch.testing.assert_close(twin(x).logits, torch.ones_like(expected))  # the copy runs its own weights
    torch.testing.assert_close(fast(x).logits, expected)  # the original is untouched
    with pytest.raises(RuntimeError, match="optimized for inference"):
        twin.train()


def test_pickling_an_optimized_model_says_what_to_do_instead(tmp_path):
    import pickle

    fast = optimize_for_inference(_model(), dtype="fp32", compile=False)
    for save in (pickle.dumps, lambda m: torch.save(m, tmp_path / "model.pt")):
        with pytest.raises(TypeError, match=r"cannot be pickled .*save_pretrained\(folder\) and call optimize_for_inference "
                                            r"again after loading"):
            save(fast)
    fast.save_pretrained(tmp_path / "saved")  # what the message says works
    again = optimize_for_inference(SwinForImageClassification.from_pretrained(tmp_path / "saved"), dtype="fp32", compile=False)
    x = images(1, 64, 64)
    torch.testing.assert_close(again(x).logits, fast(x).logits)


def test_without_compile_weight_edits_show_at_once():
    """What README says: weights must not change once optimized; without compile, changes show at once
    (with Inductor's freezing they do not: test_inductor_freezes_the_weights_into_the_compiled_graph)."""
    model = _model()
    fast = optimize_for_inference(model, dtype="fp32", compile=False)
    x = images(1, 64, 64)
    before = fast(x).logits
    with torch.no_grad():
        model.classifier.bias.add_(1.0)
    torch.testing.assert_close(fast(x).logits, before + 1.0)


def test_each_new_image_size_logs_its_compile_and_image_sizes_compiles_ahead(caplog):
    """(backend "eager": the capture is what is tested; Inductor's code generation takes minutes here. Each
    size is captured with static shapes, so that the capture takes seconds on a 2-block model.)"""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    static = torch._dynamo.config.patch(automatic_dynamic_shapes=False)
    with static, caplog.at_level("INFO", logger="swin_hf.inference"):
        fast = optimize_for_inference(_model(depths=[1, 1], num_heads=[1, 2]), dtype="fp32", backend="eager",
                                      image_sizes=[64, (32, 48)])
    warmed = counters["stats"]["unique_graphs"]
    assert warmed == 4  # two sizes, batch 1 and any other batch each
    compiled = [r.getMessage() for r in caplog.records if "compiling for image size" in r.getMessage()]
    assert len(compiled) == 4 and "compiling for image size 32x48 (any batch > 1)" in compiled[-1]
    caplog.clear()
    with static, caplog.at_level("INFO", logger="swin_hf.inference"):
        for batch, height, width in ((3, 64, 64), (1, 32, 48), (5, 32, 48)):
            fast(images(batch, height, width))
        assert counters["stats"]["unique_graphs"] == warmed and not caplog.records  # nothing new compiled
        fast(images(2, 96, 64))
    assert counters["stats"]["unique_graphs"] == warmed + 1
    assert [r.getMessage().split(";")[0] for r in caplog.records] == [
        "optimize_for_inference: compiling for image size 96x64 (any batch > 1)"]
    torch._dynamo.reset()
    with pytest.raises(ValueError, match="image_sizes: 'big' is not an image size"):
        optimize_for_inference(_model(), backend="eager", image_sizes=["big"])
    with pytest.raises(ValueError, match="needs compile=True"):
        optimize_for_inference(_model(), compile=False, image_sizes=[64])


def test_a_pipeline_runs_the_optimized_model(tmp_path):
    from transformers import pipeline

    model, processor = _model(), SwinImageProcessor.for_image_size(64)
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 255, (80, 100, 3), dtype=np.uint8))
    expected = pipeline("image-classification", model=model, image_processor=processor)(photo, top_k=2)
    fast = optimize_for_inference(model, dtype="fp32", compile=False)
    got = pipeline("image-classification", model=fast, image_processor=processor)(photo, top_k=2)
    assert [g["label"] for g in got] == [e["label"] for e in expected]
    np.testing.assert_allclose([g["score"] for g in got], [e["score"] for e in expected], atol=1e-5)


def test_int8_needs_calibration_images_on_an_x86_cpu():
    with pytest.raises(ValueError, match="calibration"):
        optimize_for_inference(_model(), quantize="int8")


# ---------------------------------------------------------------------------------------------- predict


@pytest.fixture
def saved(tmp_path):
    model = _model()
    model.save_pretrained(tmp_path / "model")
    SwinImageProcessor.for_image_size(64).save_pretrained(tmp_path / "model")
    folder = tmp_path / "photos" / "nested"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (50 + i, 70, 3), dtype=np.uint8)).save(folder / f"p{i}.png")
    (folder / "broken.jpg").write_bytes(b"not an image")
    return model, tmp_path


def test_predict_classifies_a_folder_into_json(saved, capsys):
    model, root = saved
    out = root / "predictions.json"
    assert cli(["predict", str(root / "model"), str(root / "photos"), "--top-k", "2", "--json", str(out), "--quiet"]) == 0
    rows = json.loads(out.read_text())
    assert [r["image"].rsplit("/", 1)[-1] for r in rows] == ["p0.png", "p1.png", "p2.png"]
    assert all(len(r["predictions"]) == 2 and r["predictions"][0]["label"] in {"c0", "c1", "c2", "c3"} for r in rows)
    assert all(r["predictions"][0]["score"] >= r["predictions"][1]["score"] for r in rows)
    assert "1 unreadable image(s) skipped" in capsys.readouterr().err
    # the same top class as the model itself on the same processed image
    processor = SwinImageProcessor.for_image_size(64)
    with Image.open(rows[0]["image"]) as image:
        pixels = processor(image.convert("RGB"), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        top = model(pixels).logits.argmax(-1).item()
    assert rows[0]["predictions"][0]["label"] == f"c{top}"


def test_predict_refuses_what_it_cannot_use(saved, capsys):
    _, root = saved
    assert cli(["predict", str(root / "model"), str(root / "missing.png")]) == 1
    assert "neither an image file nor a folder" in capsys.readouterr().err
    assert cli(["predict", "swin-tiny-patch4-window7-224", str(root / "photos")]) == 1
    assert "weights are random" in capsys.readouterr().err
    assert cli(["predict", str(root / "model"), str(root / "photos"), "--top-k", "0"]) == 2
