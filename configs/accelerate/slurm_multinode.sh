#!/bin/bash
# Several nodes with SLURM: one torchrun per node, rendezvous on the first node.
#   sbatch configs/accelerate/slurm_multinode.sh
#SBATCH --job-name=sft-qwen2.5
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=32
#SBATCH --time=02:00:00
set -euo pipefail
head_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
srun .venv/bin/torchrun \
  --nnodes "$SLURM_NNODES" --nproc_per_node 8 \
  --rdzv_id "$SLURM_JOB_ID" --rdzv_backend c10d --rdzv_endpoint "$head_node:29500" \
  -m sft train --preset qwen2.5-0.5b-alpaca --prompt-loss-weight 0
