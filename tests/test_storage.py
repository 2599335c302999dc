import json

import numpy as np

from napari_ibis.cli import main
from training.data.storage import export_sharegpt, read_dataset


def test_data_build_writes_resumes_exports_and_feeds_sft(tmp_path, capsys, tiny_vlm_folder):
    folder = tmp_path / "data"
    config = {"output": str(folder), "profile": "paper", "segmenter": "classical", "seeds": [0, 2],
              "max_steps": 3, "stop_iou": 0.8, "min_dice": 0.0, "self_correction_fraction": 0.5}
    (tmp_path / "data.json").write_text(json.dumps(config))
    assert main(["data", "build", str(tmp_path / "data.json")]) == 0
    lines = (folder / "samples.jsonl").read_text().splitlines()
    assert lines and len({json.loads(line)["id"] for line in lines}) == len(lines)
    assert main(["data", "build", str(tmp_path / "data.json")]) == 0  # resumes: nothing twice
    assert (folder / "samples.jsonl").read_text().splitlines() == lines

    samples = read_dataset(folder)
    row = json.loads(lines[0])
    user_images = sum(len([c for c in m["content"] if c["type"] == "image"]) for m in samples[0].messages)
    assert user_images == len(row["images"]) and samples[0].trained == row["trained"]
    assert all(isinstance(c["image"], np.ndarray) for m in samples[0].messages for c in m["content"] if c["type"] == "image")
    texts = [c["text"] for m in samples[0].messages for c in m["content"] if c["type"] == "text"]
    assert not any(t.startswith("<image>") for t in texts[1:2])  # the paper profile's texts come back unchanged

    out = export_sharegpt(folder, tmp_path / "sharegpt.json")
    records = json.loads(out.read_text())
    assert records and all(
        sum(m["content"].count("<image>") for m in r["messages"]) == len(r["images"]) for r in records
    )

    sft = {"model": str(tiny_vlm_folder), "output": str(tmp_path / "model"), "data": str(folder), "profile": "paper",
           "steps": 3, "log_every": 0}
    (tmp_path / "sft.json").write_text(json.dumps(sft))
    assert main(["sft", str(tmp_path / "sft.json")]) == 0
    assert (tmp_path / "model" / "config.json").is_file() and (tmp_path / "model" / "training_card.json").is_file()


def test_dataset_folders_load_with_hugging_face_datasets(tmp_path):
    datasets = __import__("pytest").importorskip("datasets")
    from training.data.storage import build_dataset

    folder = build_dataset({"output": str(tmp_path / "data"), "seeds": [0, 2], "max_steps": 2, "stop_iou": 0.8, "min_dice": 0.0})
    table = datasets.load_dataset("json", data_files=str(folder / "samples.jsonl"), split="train")
    assert len(table) == len(read_dataset(folder))
    first = table[0]
    assert [m["role"] for m in first["messages"]] == ["system", "user", "assistant"]
    assert all((folder / path).is_file() for path in first["images"])


def test_first_move_data_holds_one_first_decision_per_structure_without_a_segmenter(tmp_path):
    from training.data.sources import phantom_samples
    from training.data.storage import build_dataset

    folder = build_dataset({"output": str(tmp_path / "first"), "first_move_only": True, "seeds": [0, 6], "absent_probability": 1.0,
                    "segmenter": "no such backend"})  # never built: the first move needs none
    rows = [json.loads(line) for line in (folder / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == len(list(phantom_samples(range(6), absent_probability=1.0)))
    assert {row["kind"] for row in rows} == {"first_move", "absent"}
    for row in rows:
        assert [m["role"] for m in row["messages"]] == ["system", "user", "assistant"] and len(row["images"]) == 1
        reply = row["messages"][-1]["content"]
        assert ("Positive Point (" in reply) if row["kind"] == "first_move" else ("Termination" in reply)
