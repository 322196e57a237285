#!/bin/bash
# Second call (the first lacked simplejpeg): the GenD ViT-L/14 and B7 recipes only, shorter.
set -u
B=/tmp/b; mkdir -p $B && tar xJf .gpu/bundle.tar.xz -C $B && python3 -m zipfile -e .gpu/simplejpeg-*.whl $B/site/
export PYTHONPATH=$B/site:$PWD PATH=$B/bin:$PATH PYTHONUNBUFFERED=1
export AWS_ACCESS_KEY_ID=benchkey AWS_SECRET_ACCESS_KEY=benchsecret AWS_ENDPOINT_URL=http://127.0.0.1:9100 AWS_DEFAULT_REGION=us-east-1
export AWS_RESPONSE_CHECKSUM_VALIDATION=when_required AWS_REQUEST_CHECKSUM_CALCULATION=when_required TORCH_EXTENSIONS_DIR=/tmp/ext
for s in 224 380; do python3 .gpu/replicate.py .gpu/data/bench/faces$s .gpu/data/bench/faces${s}x10 10; done > $OUT/replicate.log 2>&1
RCLONE_CONFIG=/dev/null rclone serve s3 --auth-key benchkey,benchsecret --addr 127.0.0.1:9100 .gpu/data > $OUT/rclone.log 2>&1 &
sleep 2
python3 -c "import simplejpeg; print('simplejpeg', simplejpeg.__version__)" > $OUT/env.txt 2>&1
S="--order blocks --plain --warmup 5"
run() { local name=$1 t=$2; shift 2; echo "== $name $(date +%T)"; timeout $t python3 bench/train_step.py "$@" > $OUT/$name.log 2>&1; echo "rc $? $(date +%T)"; grep -E "^(in-memory|streamed|plain torch|peak)" $OUT/$name.log; }
run gend_vitl14 90 --config configs/gend_clip_vitl14_ffpp.yaml --dataset s3://bench/faces224x10 --steps 20 --stream-steps 55 $S
run dfdc_b7 120 --config configs/dfdc_b7.yaml --dataset s3://bench/faces380x10 --steps 20 --stream-steps 150 $S
