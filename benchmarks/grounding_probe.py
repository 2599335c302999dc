"""Where does grounding fail: seeing the named structure, looking at it, or writing its position?

For each model folder (or SFT checkpoint folder) on held-out phantoms (seeds from
90000 on, never trained on), four measurements of the first decision:

- clicks: greedy first clicks inside the named structure, and how many distinct
  points they take (a model that ignores the image writes one or two points);
- sees: with a target-map head in the checkpoint (``trainer_state.pt``), how often its
  highest image token lies on the target;
- looks: with the true reply fed in, the largest share of attention that any head
  of any layer gives to the target's image tokens from the position that writes the
  first word of the place ("... it lies in the | upper left of the image"): the
  first point of the reply where the image decides the text, before any word of it
  gives the position away; for that head also where it points (the centre of its
  attention over the image tokens, correlated with the target's centre) and how much
  of its attention goes to image tokens at all;
- writes: how much of the target's centre (x and y, R^2 on held-out cases) a ridge
  probe reads from the hidden state at that position, per layer (layer 0: the
  embeddings; layer i: the output of decoder layer i).

    python benchmarks/grounding_probe.py NAME=FOLDER [NAME=FOLDER ...] [--threads 1]

Prints a table and updates benchmarks/results/grounding_probe.json (one entry per name).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

OUT = ROOT / "benchmarks" / "results" / "grounding_probe.json"
CLICK_SEEDS = (90000, 90025)  # the first-click cases SFT evaluates while training (87 structures)
PROBE_SEEDS = (90000, 90080)  # more cases for the probes, which need no generation


def click_figures(model, processor, folder: Path) -> dict:
    import torch

    from training.data.sources import phantom_samples
    from training.sft.target_map import make_head
    from training.sft.train import first_click_hits

    samples = list(phantom_samples(range(*CLICK_SEEDS)))
    probe = None
    state_file = folder / "trainer_state.pt"
    if state_file.is_file():
        state = torch.load(state_file, weights_only=True)
        if "target_map_head" in state:
            head = make_head(model.config.text_config.hidden_size)
            head.load_state_dict(state["target_map_head"])
            probe = (head, int(state.get("target_map_layer", 2)))
    result = first_click_hits(model, processor, samples, map_probe=probe)
    return {"cases": result["cases"], "click_hit_rate": result["hit_rate"], "parsable": result["parsable"],
            "distinct_clicks": result["distinct_clicks"], "per_target": result["per_target"],
            "map_peak_hit_rate": result.get("map_peak_hit_rate")}


def look_and_write_figures(model, processor) -> dict:
    import torch

    from training.data.sources import phantom_samples
    from training.data.trajectories import first_move
    from training.samples import render
    from training.sft.encoding import encode
    from training.sft.target_map import BATCH_KEYS, centre, token_positions

    rng = np.random.default_rng(0)
    image_token = model.config.image_token_id
    merge = model.config.vision_config.spatial_merge_size
    looks, states, centres, attended, image_shares = [], [], [], [], []
    for sample in phantom_samples(range(*PROBE_SEEDS)):
        if not sample.mask.any():
            continue
        (rendered,) = render(first_move(sample, rng), "ibis-release")
        encoded = encode(processor, rendered)
        ids = encoded["input_ids"]
        pieces = [processor.tokenizer.decode([t]) for t in ids[0]]
        at = max(i for i in range(2, len(pieces)) if pieces[i - 2] in (" lies", " appears") and pieces[i - 1] == " in")
        inputs = {k: v for k, v in encoded.items() if k not in ("labels", *BATCH_KEYS)}
        with torch.inference_mode():
            out = model(**inputs, output_attentions=True, output_hidden_states=True)
        keys = (ids[0] == image_token).nonzero().squeeze(-1)
        on_target = np.asarray(encoded["target_map"]) > 0
        weights = torch.stack([layer[0, :, at][:, keys] for layer in out.attentions]).numpy()  # (layers, heads, tokens)
        on_image = weights.sum(-1).clip(1e-9)
        image_shares.append(on_image)
        looks.append((weights * on_target).sum(-1) / on_image)  # (layers, heads)
        places = token_positions(encoded["image_grid_thw"], merge).numpy()
        attended.append(weights @ places / on_image[..., None])  # (layers, heads, 2)
        states.append([h[0, at].numpy() for h in out.hidden_states])
        centres.append(centre(sample.mask))
    looks = np.mean(looks, axis=0)
    best_layer, best_head = np.unravel_index(looks.argmax(), looks.shape)
    target = np.array(centres)
    pointed = np.array(attended)[:, best_layer, best_head]
    points = {axis: round(float(np.corrcoef(pointed[:, k], target[:, k])[0, 1]), 3) for k, axis in enumerate("xy")}
    train = len(target) * 2 // 3
    written = {}
    for layer in range(len(states[0])):
        features = np.array([s[layer] for s in states])
        features = np.c_[(features - features[:train].mean(0)) / (features[:train].std(0) + 1e-6), np.ones(len(features))]
        weights = np.linalg.solve(features[:train].T @ features[:train] + 10.0 * np.eye(features.shape[1]),
                                  features[:train].T @ target[:train])
        error = features[train:] @ weights - target[train:]
        r2 = 1 - error.var(0) / target[train:].var(0)
        written[f"layer {layer}"] = {"x": round(float(r2[0]), 3), "y": round(float(r2[1]), 3)}
    return {"probe_cases": len(target), "held_out_probe_cases": len(target) - train,
            "attention_on_target": {"best": round(float(looks.max()), 3), "layer": int(best_layer) + 1, "head": int(best_head),
                                    "per_layer_best": [round(float(v), 3) for v in looks.max(1)],
                                    "image_share": round(float(np.mean(image_shares, 0)[best_layer, best_head]), 3),
                                    "points_at_centre_corr": points},
            "centre_r2_before_place": written}


def main() -> None:
    import torch
    import transformers

    from napari_ibis.policies.vlm import MODEL_CLASSES, inspect_model_folder

    parser = argparse.ArgumentParser()
    parser.add_argument("models", nargs="+", help="NAME=FOLDER (a model folder or an SFT checkpoint folder)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for item in args.models:
        name, folder = item.split("=", 1)
        folder = Path(folder)
        started = time.perf_counter()
        model_class = getattr(transformers, MODEL_CLASSES[inspect_model_folder(folder)])
        model = model_class.from_pretrained(folder, local_files_only=True, attn_implementation="eager").eval()
        processor = transformers.AutoProcessor.from_pretrained(folder, local_files_only=True)
        figures = {"folder": str(folder), **click_figures(model, processor, folder), **look_and_write_figures(model, processor)}
        figures["seconds"] = round(time.perf_counter() - started, 1)
        results = {**(json.loads(OUT.read_text()) if OUT.is_file() else {}), name: figures}  # side-by-side runs keep each other's
        OUT.write_text(json.dumps(results, indent=2) + "\n")
        last = max(figures["centre_r2_before_place"].items(), key=lambda kv: kv[1]["x"] + kv[1]["y"])
        sees = "n/a" if figures["map_peak_hit_rate"] is None else f"{figures['map_peak_hit_rate']:.2f}"
        print(f"{name}: clicks inside {figures['click_hit_rate']:.2f} ({figures['distinct_clicks']} distinct points in "
              f"{figures['cases']} cases), sees {sees}, looks {figures['attention_on_target']['best']:.2f} "
              f"(layer {figures['attention_on_target']['layer']} head {figures['attention_on_target']['head']}, "
              f"{figures['attention_on_target']['image_share']:.2f} of it on the image, points at the centre with "
              f"corr x {figures['attention_on_target']['points_at_centre_corr']['x']:.2f} "
              f"y {figures['attention_on_target']['points_at_centre_corr']['y']:.2f}), "
              f"writes x R2 {last[1]['x']:.2f} y R2 {last[1]['y']:.2f} ({last[0]}), {figures['seconds']:.0f} s", flush=True)


if __name__ == "__main__":
    main()
