#!/bin/bash
# On the GPU machine: unpack the carried packages, serve the carried shards with rclone (an epoch of
# each corpus listed 10 times), time each recipe's step: plain PyTorch, the engine in memory, and one
# streamed epoch from S3, with peak memory.
set -u
B=/tmp/b; mkdir -p $B && tar xJf .gpu/bundle.tar.xz -C $B
export PYTHONPATH=$B/site:$PWD PATH=$B/bin:$PATH PYTHONUNBUFFERED=1
export AWS_ACCESS_KEY_ID=benchkey AWS_SECRET_ACCESS_KEY=benchsecret AWS_ENDPOINT_URL=http://127.0.0.1:9100 AWS_DEFAULT_REGION=us-east-1
export AWS_RESPONSE_CHECKSUM_VALIDATION=when_required AWS_REQUEST_CHECKSUM_CALCULATION=when_required TORCH_EXTENSIONS_DIR=/tmp/ext
for s in 224 380; do python3 .gpu/replicate.py .gpu/data/bench/faces$s .gpu/data/bench/faces${s}x10 10; done > $OUT/replicate.log 2>&1
RCLONE_CONFIG=/dev/null rclone serve s3 --auth-key benchkey,benchsecret --addr 127.0.0.1:9100 .gpu/data > $OUT/rclone.log 2>&1 &
sleep 3
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; nproc; python3 -c "import sys, torch, timm, deepspeed, s3fs, webdataset, pycurl; print(sys.version.split()[0], 'torch', torch.__version__, 'timm', timm.__version__, 'deepspeed', deepspeed.__version__, 's3fs', s3fs.__version__)"; } > $OUT/env.txt 2>&1
S="--order blocks --plain --warmup 5"
run() { local name=$1 t=$2; shift 2; echo "== $name $(date +%T)"; timeout $t python3 bench/train_step.py "$@" > $OUT/$name.log 2>&1; echo "rc $? $(date +%T)"; grep -E "^(in-memory|streamed|plain torch|peak)" $OUT/$name.log; }
# issue 25: the GenD ViT-L/14 and B7 recipes, one streamed epoch each (3,840 crops)
run gend_vitl14 100 --config configs/gend_clip_vitl14_ffpp.yaml --dataset s3://bench/faces224x10 --steps 30 --stream-steps 55 $S
run dfdc_b7 130 --config configs/dfdc_b7.yaml --dataset s3://bench/faces380x10 --steps 60 --stream-steps 315 $S
# issue 27: B4 at 380 (the SBI recipe: 16 reals + 16 pseudo-fakes), the ZeRO stage and batch by measurement
run sbi_b4 100 --config configs/sbi_effnet_b4.yaml --dataset s3://bench/faces380x10 --steps 30 --stream-steps 100 $S
run dfdc_b7_zero0 70 --config configs/dfdc_b7.yaml --dataset s3://bench/faces380x10 --steps 60 --stream-steps 100 --zero 0 $S
run dfdc_b7_zero0_b32 60 --config configs/dfdc_b7.yaml --dataset s3://bench/faces380x10 --steps 30 --stream-steps 60 --zero 0 --batch 32 $S
run gend_vitl14_zero0 60 --config configs/gend_clip_vitl14_ffpp.yaml --dataset s3://bench/faces224x10 --steps 30 --stream-steps 55 --zero 0 $S
tail -n 3 $OUT/rclone.log
