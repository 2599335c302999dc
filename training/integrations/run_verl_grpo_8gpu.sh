#!/usr/bin/env bash
# GRPO of a Qwen2.5-VL-7B (or any model folder) with verl on one node of 8 GPUs, through the
# napari-ibis environment (training/integrations/verl_loop.py). Settings follow the IBISAgent release:
# rollout n=4, lr 1e-6, batch 256, response length 2768, no KL (shared/docs/RELEASED_PROTOCOL.md).
#
#   pip install verl vllm            # in the cluster's environment, beside napari-ibis
#   python -m training.integrations.make_verl_data OUT_DIR     # train.parquet / val.parquet from phantoms + real sets
#   MODEL=/path/to/Qwen2.5-VL-7B-sft DATA=OUT_DIR bash training/integrations/run_verl_grpo_8gpu.sh
set -euo pipefail
: "${MODEL:?set MODEL to a model folder}"
: "${DATA:?set DATA to the folder made by training.integrations.make_verl_data}"
cd "$(dirname "$0")/../.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
python3 -m verl.trainer.main_ppo \
  algorithm.adv_estimator=grpo \
  algorithm.use_kl_in_reward=False \
  data.train_files="$DATA/train.parquet" \
  data.val_files="$DATA/val.parquet" \
  data.train_batch_size=256 \
  data.max_prompt_length=4096 \
  data.max_response_length=2768 \
  data.return_raw_chat=True \
  data.image_key=images \
  actor_rollout_ref.model.path="$MODEL" \
  actor_rollout_ref.model.use_remove_padding=True \
  actor_rollout_ref.actor.optim.lr=1e-6 \
  actor_rollout_ref.actor.ppo_mini_batch_size=64 \
  actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=2 \
  actor_rollout_ref.actor.use_kl_loss=False \
  actor_rollout_ref.actor.loss_agg_mode=token-mean \
  actor_rollout_ref.rollout.name=vllm \
  actor_rollout_ref.rollout.mode=async \
  actor_rollout_ref.rollout.n=4 \
  actor_rollout_ref.rollout.tensor_model_parallel_size=2 \
  actor_rollout_ref.rollout.gpu_memory_utilization=0.6 \
  actor_rollout_ref.rollout.multi_turn.enable=True \
  actor_rollout_ref.rollout.agent.default_agent_loop=ibis_agent \
  actor_rollout_ref.rollout.agent.agent_loop_config_path=training/integrations/verl_agent_loops.yaml \
  custom_reward_function.path=training/integrations/verl_reward.py \
  custom_reward_function.name=compute_score \
  trainer.n_gpus_per_node=8 \
  trainer.nnodes=1 \
  trainer.total_epochs=1 \
  trainer.save_freq=50 \
  trainer.test_freq=25 \
  trainer.logger='[console,tensorboard]' \
  trainer.project_name=napari-ibis \
  trainer.experiment_name="grpo-$(basename "$MODEL")" \
  "$@"
