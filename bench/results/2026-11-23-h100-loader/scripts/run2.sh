#!/bin/bash
# Second GPU call: a 10x longer epoch (shards listed 10 times), the step fed by each order.
set -u
B=/tmp/b; mkdir -p $B && [ -d $B/site ] || tar xJf .gpu/bundle.tar.xz -C $B
export PYTHONPATH=$B/site:$PWD PATH=$B/bin:$PATH
export AWS_ACCESS_KEY_ID=benchkey AWS_SECRET_ACCESS_KEY=benchsecret AWS_ENDPOINT_URL=http://127.0.0.1:9100 AWS_DEFAULT_REGION=us-east-1
export AWS_RESPONSE_CHECKSUM_VALIDATION=when_required AWS_REQUEST_CHECKSUM_CALCULATION=when_required TORCH_EXTENSIONS_DIR=/tmp/ext
python3 .gpu/replicate.py .gpu/data/bench/faces380 .gpu/data/bench/faces380x10 10 > $OUT/replicate.log 2>&1
python3 .gpu/replicate.py .gpu/data/bench/faces128 .gpu/data/bench/faces128x10 10 >> $OUT/replicate.log 2>&1
pgrep -f "rclone serve s3" >/dev/null || { RCLONE_CONFIG=/dev/null rclone serve s3 --auth-key benchkey,benchsecret --addr 127.0.0.1:9100 .gpu/data > $OUT/rclone.log 2>&1 & sleep 3; }
for order in permutation resampled; do
  timeout 200 python3 bench/train_step.py --model efficientnet_b4 --size 380 --precision bf16 --zero 2 --batch 32 --workers 8 --steps 60 --warmup 10 --order $order --dataset s3://bench/faces380x10 > $OUT/train_step_zero2_b32_w8_$order.log 2>&1
done
tail -n 12 $OUT/*.log
