"""Fetch real trained CNNs for the reference checks: pinned PyPI wheels, sha256-checked.

The wheels are downloaded with pip into a cache outside the repository
(``${FILTERDB_FIXTURES:-$HOME/.cache/filterdb-fixtures}``); third-party weights are never
committed. For every ONNX model in a wheel this script

- reads every Conv node's 4-D weight, whether a graph initializer or the output of a
  ``Constant`` node (paddle2onnx writes them so), with ``onnx.numpy_helper``;
- computes the paper's graph levels (longest path from the nodes that consume a graph
  input), ``conv_depth`` (index of the node's level among the levels holding a Conv) and
  ``conv_depth_norm = conv_depth / (conv levels - 1)``;
- writes ``<model>.safetensors`` (OIHW float32; tensor ``conv{k:03d}.{onnx name}`` where k
  is the Conv's position in graph order, so a natural sort follows the graph), the same
  arrays as ``<model>.npz`` (``numpy.savez_compressed``, for filterdb's NumPy reader), a
  model card ``<model>.toml`` (task, visual category, per-layer ``groups`` and
  ``conv_depth``), ``manifest.csv`` / ``npz-manifest.csv`` for ``filterdb ingest
  --manifest`` and ``fixture.json`` (hashes and the graph-rule depths, for check.py).

Two exporters are covered, each as its wheel ships it: paddle2onnx (weights in
``Constant`` nodes; ``rapidocr-onnxruntime``) and PyTorch (weights as graph initializers;
``nudenet``'s YOLOv8n detector). ``expect`` pins the producer and where the Conv weights
live, so a wheel that changed exporter stops the script instead of silently testing less.

Idempotent: a fixture whose ``fixture.json`` records the pinned wheel hash and whose
files still hash the same is left alone. Prints the fixture folders, one per line, last.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

#: Pinned wheels: (name, version, wheel file, sha256, models). The hash is of the wheel
#: file as PyPI serves it; a different hash stops the script. ``tag`` names the wheel's
#: stores in check.py; ``expect`` is what the ONNX files must say of their exporter.
WHEELS = [
    {
        "tag": "rapidocr",
        "package": "rapidocr-onnxruntime",
        "version": "1.4.4",
        "wheel": "rapidocr_onnxruntime-1.4.4-py3-none-any.whl",
        "sha256": "971d7d5f223a7a808662229df1ef69893809d8457d834e6373d3854bc1782cbf",
        # paddle2onnx left producer_name empty in the PP-OCRv4 exports
        "expect": {"producer": ["PaddlePaddle", ""], "weight_source": "constant"},
        "models": {
            # member of the wheel -> card fields
            "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx": {
                "name": "ppocrv4-det",
                "architecture": "DBNet (PP-OCRv4 det, PP-LCNetV3 backbone)",
                "task": "Text Detection",
                "training_dataset": "PP-OCR Chinese/English text detection data",
                "visual_category": "Text",
            },
            "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx": {
                "name": "ppocrv4-rec",
                "architecture": "SVTR-LCNet (PP-OCRv4 rec)",
                "task": "Optical Character Recognition",
                "training_dataset": "PP-OCR Chinese/English text recognition data",
                "visual_category": "Text",
            },
            "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx": {
                "name": "ppocr-mobile-v2-cls",
                "architecture": "MobileNetV3-small (PP-OCR text direction classifier)",
                "task": "Classification",
                "training_dataset": "PP-OCR text line orientation data",
                "visual_category": "Text",
            },
        },
    },
    {
        # NudeNet's 320n detector: a YOLOv8n (Ultralytics) exported by PyTorch 2.3.1,
        # opset 17, every Conv weight a graph initializer (64 Convs: 39 3x3, 25 1x1).
        "tag": "nudenet",
        "package": "nudenet",
        "version": "3.4.2",
        "wheel": "nudenet-3.4.2-py3-none-any.whl",
        "sha256": "5937dbd84e5d8e5de038f08ffea5a1bb50a08475776bf2b4795914ce0eaf0331",
        "expect": {"producer": ["pytorch"], "weight_source": "initializer"},
        "models": {
            "nudenet/320n.onnx": {
                "name": "nudenet-320n",
                "architecture": "YOLOv8n (NudeNet 320n detector)",
                "task": "Object Detection",
                "training_dataset": "NudeNet detector data (body-part boxes)",
                "visual_category": "Natural",
            },
        },
    },
]

FIXTURE_VERSION = 3


def cache_dir() -> Path:
    d = os.environ.get("FILTERDB_FIXTURES") or os.path.join(Path.home(), ".cache", "filterdb-fixtures")
    return Path(d)


def sha256_file(p: Path) -> str:
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def download_wheel(spec: dict, cache: Path) -> Path:
    wdir = cache / "wheels"
    wdir.mkdir(parents=True, exist_ok=True)
    whl = wdir / spec["wheel"]
    if whl.exists() and sha256_file(whl) == spec["sha256"]:
        return whl
    if whl.exists():
        whl.unlink()
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "-q", f"{spec['package']}=={spec['version']}",
           "-d", str(wdir)]
    subprocess.run(cmd, check=True)
    got = sha256_file(whl)
    if got != spec["sha256"]:
        whl.unlink()
        sys.exit(f"fetch_models: sha256 mismatch for {spec['wheel']}: got {got}, pinned {spec['sha256']}")
    return whl


def graph_levels(graph) -> dict[int, int]:
    """Level of each node (by index): the longest path from the nodes that consume a graph
    input (level 0). Nodes reached only from constants get no level."""
    inits = {i.name for i in graph.initializer}
    inputs = {i.name for i in graph.input if i.name not in inits}
    producer: dict[str, int] = {}
    for k, n in enumerate(graph.node):
        for o in n.output:
            producer[o] = k
    # ONNX requires nodes in topological order; sort anyway to be safe.
    order = _topo_order(graph, producer)
    level: dict[int, int] = {}
    for k in order:
        n = graph.node[k]
        best = 0 if any(i in inputs for i in n.input) else None
        for i in n.input:
            p = producer.get(i)
            if p is not None and p in level:
                cand = level[p] + 1
                best = cand if best is None or cand > best else best
        if best is not None:
            level[k] = best
    return level


def _topo_order(graph, producer) -> list[int]:
    n = len(graph.node)
    deps = [set() for _ in range(n)]
    users = [[] for _ in range(n)]
    for k, node in enumerate(graph.node):
        for i in node.input:
            p = producer.get(i)
            if p is not None and p != k:
                deps[k].add(p)
    for k in range(n):
        for p in deps[k]:
            users[p].append(k)
    indeg = [len(d) for d in deps]
    ready = [k for k in range(n) if indeg[k] == 0]
    out = []
    import heapq
    heapq.heapify(ready)
    while ready:
        k = heapq.heappop(ready)
        out.append(k)
        for u in users[k]:
            indeg[u] -= 1
            if indeg[u] == 0:
                heapq.heappush(ready, u)
    if len(out) != n:
        raise ValueError("graph has a cycle")
    return out


def convert_model(onnx_path: Path, out_dir: Path, card: dict, source: str) -> dict:
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper
    from safetensors.numpy import save_file

    model = onnx.load(str(onnx_path))
    g = model.graph
    tensors = {i.name: i for i in g.initializer}
    source_of = {i.name: "initializer" for i in g.initializer}
    for node in g.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    tensors[node.output[0]] = a.t
                    source_of[node.output[0]] = "constant"
    levels = graph_levels(g)
    convs = []
    for k, node in enumerate(g.node):
        if node.op_type != "Conv" or len(node.input) < 2:
            continue
        wname = node.input[1]
        if wname not in tensors:
            raise ValueError(f"{onnx_path.name}: Conv {node.name} weight {wname} is neither an initializer nor a Constant")
        w = numpy_helper.to_array(tensors[wname])
        if w.ndim != 4:
            continue  # 1-D or 3-D convolution: not a 2D Conv
        groups = 1
        for a in node.attribute:
            if a.name == "group":
                groups = int(helper.get_attribute_value(a))
        convs.append({"node": k, "node_name": node.name, "onnx_name": wname,
                      "w": np.ascontiguousarray(w.astype(np.float32)), "groups": groups,
                      "level": levels.get(k), "weight_source": source_of[wname]})
    conv_levels = sorted({c["level"] for c in convs if c["level"] is not None})
    nlev = len(conv_levels)
    out: dict = {}
    layers = []
    for j, c in enumerate(convs):
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", c["onnx_name"])
        tname = f"conv{j:03d}.{safe}"
        out[tname] = c["w"]
        depth = conv_levels.index(c["level"]) if c["level"] is not None else None
        layers.append({
            "tensor": tname, "onnx_name": c["onnx_name"], "node_name": c["node_name"],
            "weight_source": c["weight_source"], "shape": list(c["w"].shape),
            "groups": c["groups"], "graph_level": c["level"], "conv_depth": depth,
            "conv_depth_norm": (0.0 if nlev <= 1 else depth / (nlev - 1)) if depth is not None else None,
        })
    name = card["name"]
    st_path = out_dir / f"{name}.safetensors"
    save_file(out, str(st_path), metadata={"source": source, "format": "oihw float32"})
    npz_path = out_dir / f"{name}.npz"
    np.savez_compressed(str(npz_path), **out)
    # The card: meta-parameters plus per-layer groups and graph-rule conv_depth.
    lines = [f'{k} = {json.dumps(v)}' for k, v in card.items()]
    lines += ['layout = "oihw"', f'conv_levels = {nlev}', f'url = {json.dumps(source)}',
              f'notes = {json.dumps("converted from " + onnx_path.name + " by tests/reference/fetch_models.py; conv_depth from the ONNX graph levels")}']
    for L in layers:
        entry = [f"groups = {L['groups']}"]
        if L["conv_depth"] is not None:
            entry.append(f"conv_depth = {L['conv_depth']}")
        lines.append(f'\n[layers.{json.dumps(L["tensor"])}]\n' + "\n".join(entry))
    (out_dir / f"{name}.toml").write_text("\n".join(lines) + "\n")
    graph_nodes_with_level = len(levels)
    op_counts: dict[str, int] = {}
    for node in g.node:
        op_counts[node.op_type] = op_counts.get(node.op_type, 0) + 1
    return {
        "name": name, "onnx": onnx_path.name, "producer": model.producer_name,
        "producer_version": model.producer_version,
        "opset": model.opset_import[0].version if model.opset_import else None,
        "opsets": {(o.domain or "ai.onnx"): o.version for o in model.opset_import},
        "op_counts": dict(sorted(op_counts.items())),
        "safetensors": st_path.name, "safetensors_sha256": sha256_file(st_path),
        "npz": npz_path.name, "npz_sha256": sha256_file(npz_path),
        "card": f"{name}.toml", "card_fields": card, "layers": layers,
        "conv_levels": nlev, "depth": len(set(levels.values())), "nodes_with_level": graph_nodes_with_level,
    }


def check_exporter(spec: dict, m: dict) -> None:
    """Stops the script if a model is not what the pin says: its producer, and where every
    Conv weight lives (initializer or Constant node)."""
    want = spec.get("expect") or {}
    if "producer" in want and m["producer"] not in want["producer"]:
        sys.exit(f"fetch_models: {m['onnx']} of {spec['wheel']}: producer_name {m['producer']!r}, "
                 f"expected one of {want['producer']!r}")
    if "weight_source" in want:
        other = [L["onnx_name"] for L in m["layers"] if L["weight_source"] != want["weight_source"]]
        if other:
            sys.exit(f"fetch_models: {m['onnx']} of {spec['wheel']}: {len(other)} Conv weight(s) are not "
                     f"{want['weight_source']}s, e.g. {other[:3]}")
    if not any(L["shape"][2:] == [3, 3] for L in m["layers"]):
        sys.exit(f"fetch_models: {m['onnx']} of {spec['wheel']}: no 3x3 Conv weights")


def build_fixture(spec: dict, cache: Path) -> Path:
    fdir = cache / f"{spec['package']}-{spec['version']}"
    meta_path = fdir / "fixture.json"
    if meta_path.exists():
        try:
            meta = json.loads(meta_path.read_text())
            ok = (meta.get("fixture_version") == FIXTURE_VERSION and meta.get("wheel_sha256") == spec["sha256"]
                  and all(sha256_file(fdir / m[k]) == m[f"{k}_sha256"] for m in meta["models"]
                          for k in ("safetensors", "npz")))
        except (OSError, ValueError, KeyError):
            ok = False
        if ok:
            print(f"fetch_models: {fdir.name} present, hashes match")
            return fdir
    whl = download_wheel(spec, cache)
    fdir.mkdir(parents=True, exist_ok=True)
    models = []
    with zipfile.ZipFile(whl) as z:
        for member, card in spec["models"].items():
            onnx_path = fdir / Path(member).name
            onnx_path.write_bytes(z.read(member))
            source = f"pypi:{spec['package']}=={spec['version']}:{member}"
            m = convert_model(onnx_path, fdir, dict(card), source)
            m["onnx_sha256"] = sha256_file(onnx_path)
            check_exporter(spec, m)
            models.append(m)
            print(f"fetch_models: {m['name']}: {m['producer'] or '(no producer_name)'} {m['producer_version']}, opset {m['opset']}, "
                  f"{len(m['layers'])} conv tensors ({m['layers'][0]['weight_source']}s), "
                  f"{sum(1 for L in m['layers'] if L['shape'][2:] == [3, 3])} 3x3, {m['conv_levels']} conv levels, "
                  f"depth {m['depth']}")
    for manifest, key in (("manifest.csv", "safetensors"), ("npz-manifest.csv", "npz")):
        with open(fdir / manifest, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["path", "card"])
            for m in models:
                w.writerow([m[key], m["card"]])
    meta = {"fixture_version": FIXTURE_VERSION, "tag": spec["tag"], "package": spec["package"], "version": spec["version"],
            "wheel": spec["wheel"], "wheel_sha256": spec["sha256"], "models": models}
    meta_path.write_text(json.dumps(meta, indent=1))
    return fdir


def main() -> None:
    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    repo = Path(__file__).resolve().parents[2]
    if cache.resolve().is_relative_to(repo):
        sys.exit(f"fetch_models: the fixture cache {cache} is inside the repository; set FILTERDB_FIXTURES elsewhere")
    dirs = [build_fixture(spec, cache) for spec in WHEELS]
    for d in dirs:
        print(d)


if __name__ == "__main__":
    main()
