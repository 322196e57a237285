"""Ingest the bench corpora to local folders, for the GPU machine (served there by rclone)."""
import sys, tempfile
sys.path.insert(0, ".")
from dfdc.config import load_config
from data_pipeline.synth import synth
from data_pipeline.ingest import ingest

def main():
    for size, shard_bytes in ((224, 1_000_000), (380, 2_000_000)):
        cfg = load_config(None, [f"data.image_size={size}", "synth.videos=48", "ingest.frames_per_video=8",
            "ingest.faces_per_frame=1", f"ingest.crop_size={size}", "ingest.videos_per_task=4",
            "ingest.val_fraction=0", f"ingest.shard_bytes={shard_bytes}"])
        raw = tempfile.mkdtemp()
        synth(raw, cfg.synth, log=lambda *_: None)
        ingest(raw, f".gpu/data/bench/faces{size}", cfg, progress=False, log=print)

if __name__ == "__main__":
    main()
