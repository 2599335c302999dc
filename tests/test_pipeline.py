import json

import pytest
import yaml

from napari_ibis.cli import main


@pytest.mark.slow
def test_one_command_rebuilds_an_agent_from_nothing_and_bundles_it(tmp_path):
    run = tmp_path / "run"
    stages = {
        "data.yaml": {"output": str(run / "data"), "seeds": [0, 2], "max_steps": 2, "stop_iou": 0.8, "min_dice": 0.0},
        "first.yaml": {"output": str(run / "first"), "first_move_only": True, "seeds": [0, 3]},
        "grounding.yaml": {"model": str(run / "init"), "output": str(run / "grounding"), "data": str(run / "first"),
                           "steps": 2, "log_every": 0, "tiny": {"vocab_size": 600}, "target_map_weight": 1.0},
        "stream.yaml": {"model": str(run / "grounding"), "output": str(run / "stream"), "steps": 2, "batch_size": 2,
                        "log_every": 0, "stream": {"start_seed": 200_000, "shuffle_buffer": 4}, "target_map_weight": 1.0,
                        "target_heads_from": str(run / "grounding")},
        "sft.yaml": {"model": str(run / "stream"), "output": str(run / "sft"), "data": str(run / "data"), "steps": 2,
                     "log_every": 0},
        "dagger-data.yaml": {"output": str(run / "dagger-data"), "model": str(run / "sft"), "seeds": [0, 1],
                             "max_steps": 2},
        "dagger-sft.yaml": {"model": str(run / "sft"), "output": str(run / "dagger"), "steps": 2, "log_every": 0,
                            "data": [str(run / "data"), str(run / "dagger-data")]},
        "grpo.yaml": {"model": str(run / "dagger"), "output": str(run / "grpo"), "steps": 1, "questions_per_step": 1,
                      "group_size": 2, "mode": "decision", "max_new_tokens": 8, "seeds": [0, 2]},
        "eval.yaml": {"model": str(run / "grpo"), "output": str(run / "eval.json"), "phantom_seeds": [90000, 90001],
                      "limit": 2, "max_steps": 2},
    }
    for name, content in stages.items():
        (tmp_path / name).write_text(yaml.safe_dump(content))
    plan = {"data": "data.yaml", "grounding_data": "first.yaml", "grounding": "grounding.yaml",
            "grounding_stream": "stream.yaml", "sft": "sft.yaml",
            "dagger": [{"data": ["dagger-data.yaml"], "sft": "dagger-sft.yaml"}], "grpo": "grpo.yaml", "evaluate": "eval.yaml",
            "bundle": str(tmp_path / "bundle"), "bundle_stage": "sft"}
    (tmp_path / "plan.yaml").write_text(yaml.safe_dump(plan))
    assert main(["pipeline", str(tmp_path / "plan.yaml")]) == 0
    bundle = tmp_path / "bundle"
    assert (bundle / "model.safetensors").is_file() and not (bundle / "checkpoint").exists()
    card = json.loads((bundle / "model_card.json").read_text())
    assert card["grounding"]["steps"] == 2 and card["sft"]["steps"] == 2 and card["grpo"]["steps"] == 1
    assert card["stages"]["sft"] == str(run / "sft")
    # a DAgger round: the SFT model's own states, labelled, then SFT on them and the trajectories
    states = card["dagger_rounds"][0]["states"][str(run / "dagger-data")]
    assert states > 0 and card["dagger_rounds"][0]["sft"]["samples"] == states + card["data"]["chat_samples"]
    assert card["stages"]["dagger"] == str(run / "dagger")
    assert card["grounding_stream"]["samples"] == "streamed: 4 new first decisions"  # the GPU stage, at tiny size
    # GRPO ran and is on the card, but the stage named by bundle_stage is the one shipped
    assert (bundle / "model.safetensors").read_bytes() == (run / "sft" / "model.safetensors").read_bytes()
    assert card["stages"]["bundled_stage"] == "sft"
    assert card["evaluation"]["phantoms (synthetic)"]["cases"] == 2
    markdown = (bundle / "MODEL_CARD.md").read_text()
    assert "| phantoms (synthetic) | 2 |" in markdown and "SFT on first decisions (grounding): 2 steps" in markdown
    assert "each from a new phantom made while training (GPU): 2 steps of batch 2 on streamed: 4 new" in markdown
    assert "target-map terms (training/sft/target_map.py): target_map x 1.0" in markdown  # how the model was taught
    assert "This folder holds the model of the `sft` stage" in markdown and "Not in this folder" in markdown
    assert f"DAgger round 1: {states} states" in markdown
    # the bundled folder is a model the runtime loads
    from napari_ibis.policies import load_policy

    assert load_policy(str(bundle)).identity()["model_type"] == "qwen3_vl"
    # a second run finds every stage complete and only re-bundles
    first_sft = (run / "sft" / "model.safetensors").stat().st_mtime
    assert main(["pipeline", str(tmp_path / "plan.yaml")]) == 0
    assert (run / "sft" / "model.safetensors").stat().st_mtime == first_sft


def test_a_config_reads_numbers_in_exponent_form_as_numbers(tmp_path):
    from training.config import read_config
    from training.rl.grpo import GRPOConfig

    path = tmp_path / "grpo.yaml"
    path.write_text("model: m\noutput: o\nlearning_rate: 1e-5\nkl_coef: 2E-3\nsteps: 40\nname: 1e5x\nseed: 0\n")
    read = read_config(path)
    assert read["learning_rate"] == 1e-5 and read["kl_coef"] == 0.002 and read["steps"] == 40
    assert read["name"] == "1e5x" and isinstance(read["steps"], int)  # words and integers stay as they were
    assert GRPOConfig(**{k: v for k, v in read.items() if k != "name"}).learning_rate == 1e-5


@pytest.mark.parametrize("text, message", [
    ("model: m\noutput: o\nlearning_rat: 0.1\n", "unknown key learning_rat"),
    ("model: m\noutput: o\nlearning_rate: fast\n", "learning_rate must be a number, not 'fast'"),
    ("model: m\noutput: o\nsteps: 2.5\n", "steps must be a whole number"),
    ("model: m\nsteps: 2\n", "missing output"),
    ("model: m\noutput: o\ntrained_tokens: words\n", "trained_tokens must be"),
    ("model: [m\n", "cannot read"),
    ("- a list\n", "expected `key: value` lines"),
])
def test_a_config_mistake_is_one_line_naming_the_file_and_nothing_runs(tmp_path, capsys, text, message):
    path = tmp_path / "grpo.yaml"
    path.write_text(text)
    assert main(["grpo", str(path)]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and str(path) in error and message in error
    assert not (tmp_path / "o").exists()


def test_a_misspelt_data_option_is_refused_in_one_line_before_anything_is_built(tmp_path, capsys):
    path = tmp_path / "data.yaml"
    path.write_text(f"output: {tmp_path / 'data'}\nseeds: [0, 2]\nstop_iuo: 0.8\n")  # stop_iou, misspelt
    assert main(["data", "build", str(path)]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "unknown key stop_iuo" in error
    assert not (tmp_path / "data").exists()


def test_a_misspelt_pipeline_stage_is_refused_rather_than_skipped(tmp_path, capsys):
    path = tmp_path / "agent.yaml"
    path.write_text("sft: sft.yaml\ngrpoo: grpo.yaml\n")
    assert main(["pipeline", str(path)]) == 2
    assert "unknown key grpoo" in capsys.readouterr().err


@pytest.mark.parametrize("command, text, message", [
    ("grpo", "model: m\noutput: o\nmode: decison\n", "mode must be 'trajectory' | 'decision', not 'decison'"),
    ("grpo", "model: m\noutput: o\ngroup_size: 1\n", "group_size must be 2 or more"),
    ("grpo", "model: m\noutput: o\nloss_aggregation: seq-mean\n", "loss_aggregation must be"),
    ("grpo", "model: m\noutput: o\nrewards:\n  anwser_levels: [[0.8, 3]]\n", "rewards: unknown key anwser_levels"),
    ("grpo", "model: m\noutput: o\nrewards:\n  placement_hit: lots\n", "rewards: placement_hit must be a number"),
    ("grpo", "model: m\noutput: o\nlora:\n  rank: 8\n", "lora: unknown key rank"),
    ("grpo", "model: m\noutput: o\nsegmenter: nnunet\n", "unknown segmenter 'nnunet'"),
    ("sft", "model: m\noutput: o\nstream:\n  start_sed: 200000\n", "stream: unknown key start_sed"),
    ("sft", "model: m\noutput: o\ntiny:\n  hidden: 64\n", "tiny: unknown key hidden"),
    ("sft", "model: m\noutput: o\nprofile: release\n", "profile must be 'ibis-release' | 'paper'"),
    ("sft", "model: m\noutput: o\nextra:\n  stop_iuo: 0.8\n", "extra: unknown key stop_iuo"),
    ("benchmark", "model: m\noutput: o\nprofile: papper\n", "profile must be"),
    ("data build", "output: o\nseeds: [5, 2]\n", "seeds must be [first, stop)"),
    ("data build", "output: o\nreal: [brain]\n", "real: unknown set brain"),
    ("data dagger", "output: o\nmodel: /nonexistent/model\n", "model folder not found"),
])
def test_every_bad_config_is_one_line_and_exit_2_before_any_model_loads(tmp_path, capsys, monkeypatch, command, text, message):
    import transformers

    def never(*_args, **_kwargs):
        raise AssertionError("a model was loaded before the config was checked")

    monkeypatch.setattr(transformers.AutoProcessor, "from_pretrained", never)
    path = tmp_path / "stage.yaml"
    path.write_text(text)
    assert main([*command.split(), str(path)]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and message in error, error
    assert not (tmp_path / "o").exists()


def test_set_overrides_a_key_and_a_key_inside_a_section(tmp_path):
    from training.config import load_config
    from training.rl.grpo import GRPOConfig

    path = tmp_path / "grpo.yaml"
    path.write_text("model: m\noutput: o\nsteps: 40\nrewards:\n  progress: 1.0\n")
    config = load_config(GRPOConfig, path, ["steps=3", "learning_rate=1e-6", "rewards.progress_gain=10", "real=[aal]"])
    assert config.steps == 3 and config.learning_rate == 1e-6 and config.real == ["aal"]
    assert config.rewards == {"progress": 1.0, "progress_gain": 10}


@pytest.mark.parametrize("command, field", [("sft", "target_map_weight"), ("grpo", "trained_tokens"),
                                             ("benchmark", "phantom_seeds"), ("data build", "self_correction_fraction"),
                                             ("data dagger", "stop_iou")])
def test_every_training_commands_help_lists_its_keys_with_their_help(capsys, command, field):
    with pytest.raises(SystemExit) as done:
        main([*command.split(), "--help"])
    shown = capsys.readouterr().out
    assert done.value.code == 0 and f"  {field}: " in shown and "--set KEY=VALUE" in shown


def test_settings_that_mean_the_same_default_to_the_same_value():
    import inspect

    from training.data.storage import BuildConfig
    from training.data.trajectories import EXPERT_STOP_IOU, simulate
    from training.rl.dagger import DaggerConfig, expert_move
    from training.rl.grpo import GRPOConfig

    assert BuildConfig("o").stop_iou == DaggerConfig.__dataclass_fields__["stop_iou"].default == EXPERT_STOP_IOU
    assert GRPOConfig("m", "o").stop_iou == EXPERT_STOP_IOU
    assert inspect.signature(simulate).parameters["stop_iou"].default == EXPERT_STOP_IOU
    assert inspect.signature(expert_move).parameters["stop_iou"].default == EXPERT_STOP_IOU == 0.8
