#!/bin/bash
# On the GPU machine: unpack the carried packages, serve the carried shards with rclone, run the benches.
set -u
B=/tmp/b; mkdir -p $B && tar xJf .gpu/bundle.tar.xz -C $B
export PYTHONPATH=$B/site:$PWD PATH=$B/bin:$PATH
export AWS_ACCESS_KEY_ID=benchkey AWS_SECRET_ACCESS_KEY=benchsecret AWS_ENDPOINT_URL=http://127.0.0.1:9100 AWS_DEFAULT_REGION=us-east-1
export AWS_RESPONSE_CHECKSUM_VALIDATION=when_required AWS_REQUEST_CHECKSUM_CALCULATION=when_required TORCH_EXTENSIONS_DIR=/tmp/ext
RCLONE_CONFIG=/dev/null rclone serve s3 --auth-key benchkey,benchsecret --addr 127.0.0.1:9100 .gpu/data > $OUT/rclone.log 2>&1 &
sleep 3
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; nproc; python3 -c "import sys, torch, timm, deepspeed, s3fs, webdataset; print(sys.version.split()[0], 'torch', torch.__version__, 'timm', timm.__version__, 'deepspeed', deepspeed.__version__, 's3fs', s3fs.__version__)"; } > $OUT/env.txt 2>&1
for what in "$@"; do
  case $what in
    step) timeout 300 python3 bench/train_step.py --model efficientnet_b4 --size 380 --precision bf16 --zero 2 --batch 32 --workers 8 --steps 30 --warmup 10 --dataset s3://bench/faces380 > $OUT/train_step_zero2_b32_w8.log 2>&1 ;;
    loader128) timeout 240 python3 bench/loader_order.py --dataset s3://bench/faces128 --workers 1,2,8 --rounds 3 > $OUT/loader_order_128px.log 2>&1 ;;
    loader380) timeout 240 python3 bench/loader_order.py --dataset s3://bench/faces380 --size 380 --batch 32 --batches 24 --workers 2,8 --rounds 3 > $OUT/loader_order_380px.log 2>&1 ;;
  esac
done
tail -n 15 $OUT/*.log
