#!/usr/bin/env bash
# Multi-GPU / multi-node testing with torchrun (mmdet's variables):
#   tools/dist_test.sh CONFIG CHECKPOINT GPUS [test.py args]
#   (one node: a free port is picked unless PORT is set)
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 PORT=29500 tools/dist_test.sh CONFIG CKPT 8
#   (no GPU: GPUS processes on the CPU with the gloo backend; tools/test.py picks it)
set -euo pipefail
CONFIG=$1
CHECKPOINT=$2
GPUS=$3
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-"127.0.0.1"}
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON=${PYTHON:-$( [ -x "$ROOT/.venv/bin/python" ] && echo "$ROOT/.venv/bin/python" || echo python)}
if [ "$NNODES" = 1 ] && [ -z "${PORT:-}" ]; then
    # one node, no PORT: torchrun's standalone rendezvous picks a free port (jobs side by side never collide)
    RDZV=(--standalone)
else
    RDZV=(--nnodes="$NNODES" --node_rank="$NODE_RANK" --master_addr="$MASTER_ADDR" --master_port="${PORT:-29500}")
fi
PYTHONPATH="$ROOT:${PYTHONPATH:-}" exec "$PYTHON" -m torch.distributed.run "${RDZV[@]}" \
    --nproc_per_node="$GPUS" \
    "$ROOT/tools/test.py" "$CONFIG" "$CHECKPOINT" --launcher pytorch "${@:4}"
