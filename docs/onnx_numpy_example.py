"""Run a `wordlm export`ed model with onnxruntime and numpy alone: no torch, no wordlm.

    wordlm export runs/x/best --format onnx --out model.onnx [--quantize-dynamic]
    python docs/onnx_numpy_example.py model.onnx "the cat sat on the mat ."

The .onnx file carries everything needed besides the graph in its metadata: the vocabulary (one word
per line, id order) and the recurrent state's sizes. The graph maps ids [seq, batch] plus the state
(h0, c0), each [num_layers, batch, hidden], to logits [seq, batch, vocab] and the next state (hn, cn);
feeding hn, cn back in continues the text, which is how long texts are scored chunk by chunk.

This prints the text's mean loss (nats per predicted word), its perplexity, and the five likeliest next
words. The test suite runs this very file with torch made unimportable.
"""

from __future__ import annotations

import sys

import numpy as np
import onnxruntime as ort


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def main(model_path: str, text: str) -> None:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    session = ort.InferenceSession(model_path, opts, providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    itos = meta["vocab"].split("\n")[:-1]  # one word per line, each line ended by "\n"
    stoi = {w: i for i, w in enumerate(itos)}
    num_layers, hidden = int(meta["num_layers"]), int(meta["hidden_dim"])
    assert len(itos) == int(meta["vocab_size"])

    words = text.split()
    if len(words) < 3:
        raise SystemExit("give at least 3 words")
    unknown = [w for w in words if w not in stoi]
    if unknown and "<unk>" not in stoi:
        raise SystemExit(f"{unknown[0]!r} is not in the vocabulary, which has no <unk>")
    ids = np.array([stoi[w] if w in stoi else stoi["<unk>"] for w in words], dtype=np.int64)

    # Two chunks, the state carried from the first into the second, as an evaluation would do it.
    h = np.zeros((num_layers, 1, hidden), np.float32)
    c = np.zeros_like(h)
    half = len(ids) // 2
    logits = []
    for chunk in (ids[:half], ids[half:]):
        out, h, c = session.run(["logits", "hn", "cn"], {"ids": chunk[:, None], "h0": h, "c0": c})
        assert out.shape == (len(chunk), 1, len(itos)) and np.isfinite(out).all()
        logits.append(out[:, 0])
    logprobs = log_softmax(np.concatenate(logits))  # [len(words), vocab]

    loss = -logprobs[np.arange(len(ids) - 1), ids[1:]].mean()
    top = np.argsort(-logprobs[-1])[:5]
    print(f"loss {loss:.4f}  ppl {np.exp(loss):.2f}  over {len(ids) - 1} predicted words")
    print("next:", "  ".join(f"{itos[i]} ({np.exp(logprobs[-1, i]):.3f})" for i in top))


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    main(sys.argv[1], sys.argv[2])
