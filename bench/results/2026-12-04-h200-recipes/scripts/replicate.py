"""A longer epoch from the same shards: dataset <src> as <dst> with every train shard listed K times
(hard links under new names), so the step sees an epoch of K x the samples (the GPU run cannot carry
more data). Keys repeat across copies; the loader does not care."""
import json, os, sys
src, dst, k = sys.argv[1], sys.argv[2], int(sys.argv[3])
m = json.load(open(f"{src}/manifest.json"))
os.makedirs(f"{dst}/shards/train", exist_ok=True)
shards = []
for c in range(k):
    for s in m["shards"]:
        if s["split"] != "train":
            continue
        base = s["url"][:-len(".tar")]
        new = f"{base}-copy{c}"
        for ext in (".tar", ".idx.json"):
            if not os.path.exists(f"{dst}/{new}{ext}"):
                os.link(f"{src}/{base}{ext}", f"{dst}/{new}{ext}")
        shards.append(dict(s, url=new + ".tar"))
m["shards"] = shards
t = m["splits"]["train"]
for key in ("bytes", "fake", "real", "samples", "shards", "videos"):
    t[key] *= k
json.dump(m, open(f"{dst}/manifest.json", "w"))
print(dst, len(shards), "shards", sum(s["samples"] for s in shards), "samples")
