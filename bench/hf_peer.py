#!/usr/bin/env python3
"""Hugging Face transformers peer for bench/gpu_decode_bench.cc.

Random-weight LlamaForCausalLM models of the same shapes (Llama 3.2 1B and
Llama 3 8B, as model/synthetic.cc's llama-1b / llama-8b presets), bf16, SDPA
attention, measuring decode TPOT at the same batch sizes and context lengths:
a KV cache of `context` tokens is built by one prefill, then `steps` decode
steps of one token per sequence are timed (CUDA-synchronised, after warm-up).

    python3 bench/hf_peer.py --presets llama-1b,llama-8b --batches 1,8,32,64 \
        --contexts 512,4096 --json hf_peer.json

Needs torch and transformers with a CUDA device (the GPU machine's python3).
"""
import argparse
import json
import sys
import time

PRESETS = {
    # Llama 3.2 1B
    "llama-1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                     num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
                     rope_theta=500000.0, tie_word_embeddings=True),
    # Llama 3 8B
    "llama-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                     num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
                     rope_theta=500000.0, tie_word_embeddings=False),
}


def ints(s):
    return [int(x) for x in s.split(",") if x]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", default="llama-1b,llama-8b")
    ap.add_argument("--batches", default="1,8,32,64")
    ap.add_argument("--contexts", default="512,4096")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--json", default="")
    args = ap.parse_args()

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    if not torch.cuda.is_available():
        print("hf_peer: no CUDA device", file=sys.stderr)
        return 1
    torch.manual_seed(0)
    out = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__,
           "precision": "bf16", "attention": "sdpa", "results": []}
    import transformers
    out["transformers"] = transformers.__version__
    for preset in args.presets.split(","):
        shape = PRESETS[preset]
        max_ctx = max(ints(args.contexts)) + args.steps + 8
        config = LlamaConfig(**shape, max_position_embeddings=max(8192, max_ctx),
                             torch_dtype="bfloat16", attn_implementation="sdpa")
        with torch.device("cuda"):
            model = LlamaForCausalLM(config).to(torch.bfloat16).eval()
        for context in ints(args.contexts):
            for batch in ints(args.batches):
                r = {"preset": preset, "phase": "decode", "batch": batch, "context": context}
                try:
                    with torch.inference_mode():
                        ids = torch.randint(0, config.vocab_size, (batch, context), device="cuda")
                        # Only the last position's logits: all of them at
                        # batch 64 x 4096 would be ~67 GB of BF16.
                        try:
                            o = model(input_ids=ids, use_cache=True, logits_to_keep=1)
                        except TypeError:  # transformers < 4.45
                            o = model(input_ids=ids, use_cache=True, num_logits_to_keep=1)
                        past = o.past_key_values
                        nxt = o.logits[:, -1:].argmax(-1)
                        del o
                        timed = 0.0
                        for step in range(args.steps + 2):
                            torch.cuda.synchronize()
                            t0 = time.perf_counter()
                            o = model(input_ids=nxt, past_key_values=past, use_cache=True)
                            nxt = o.logits[:, -1:].argmax(-1)
                            past = o.past_key_values
                            torch.cuda.synchronize()
                            if step >= 2:
                                timed += time.perf_counter() - t0
                        tpot = timed / args.steps
                        r["tpot_ms"] = tpot * 1e3
                        r["tokens_per_s"] = batch / tpot
                        del past, o
                except torch.cuda.OutOfMemoryError as e:
                    r["skipped"] = "out of memory: " + str(e).splitlines()[0]
                torch.cuda.empty_cache()
                print(json.dumps(r), file=sys.stderr)
                out["results"].append(r)
        del model
        torch.cuda.empty_cache()
    text = json.dumps(out, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
